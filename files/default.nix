# This deployment of Pluto: the service module with the values `fab deploy` wrote.
#
# The values come from settings.json, read as JSON data and never templated into
# Nix source, so a value such as "${...}" or a quote stays an inert string. They
# enter at mkDefault priority: an admin's own definition in configuration.nix
# (say `services.pluto.memoryMax = "8G";`) wins without lib.mkForce.
{ lib, ... }:
{
  imports = [ ./module.nix ];
  services.pluto = lib.mapAttrs (_: lib.mkDefault) (lib.importJSON ./settings.json);
}
