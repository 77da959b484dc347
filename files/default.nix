# This deployment of Pluto: the service module with the values `fab deploy` wrote.
#
# The values come from settings.json (and public.json and sessions/<name>.json,
# written by `fab session open`), read as JSON data and never templated into Nix
# source, so a value such as "${...}" or a quote stays an inert string. They
# enter at mkDefault priority: an admin's own definition in configuration.nix
# (say `services.pluto.memoryMax = "8G";`) wins without lib.mkForce.
{ lib, ... }:
let
  # Host-level settings of sessions (publicHost, certificate), once sessions exist.
  public = if builtins.pathExists ./public.json then lib.importJSON ./public.json else { };
  sessionFiles = lib.filterAttrs (file: kind: kind == "regular" && lib.hasSuffix ".json" file) (
    if builtins.pathExists ./sessions then builtins.readDir ./sessions else { }
  );
in
{
  imports = [ ./module.nix ];
  services.pluto = lib.mapAttrs (_: lib.mkDefault) (lib.importJSON ./settings.json // public) // {
    instances = lib.mapAttrs' (
      file: _:
      lib.nameValuePair (lib.removeSuffix ".json" file) (
        lib.mapAttrs (_: lib.mkDefault) (lib.importJSON (./sessions + "/${file}"))
      )
    ) sessionFiles;
  };
}
