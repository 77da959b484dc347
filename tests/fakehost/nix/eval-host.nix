# Evaluates a host configuration (a configuration.nix, or a flake directory)
# with the mini module system and returns, for `nix-instantiate --eval
# --strict --json`, what the stand-in nixos-rebuild acts on: the declared
# containers with their own evaluated system, the host units
# `container@<name>`, failed assertions, warnings, and every file imported.
#
# Flakes: `outputs` is called with stand-in inputs whose
# `lib.nixosSystem { modules, specialArgs }` hands its modules back; only the
# flake's own files are evaluated (nixpkgs is not there).
{
  configuration ? null,
  flake ? null,
  hostName ? "hainich",
}:
let
  lib = import ./lib.nix;
  pkgs = import ./pkgs.nix { inherit lib; };
  inherit (import ./modules.nix { inherit lib; }) evalModules;
  inherit (builtins)
    attrNames
    concatMap
    elemAt
    filter
    length
    mapAttrs
    ;

  nullToEmpty = x: if x == null then { } else x;

  flakeSystem =
    let
      outputs = (import (flake + "/flake.nix")).outputs;
      stubInput = {
        lib = lib // {
          nixosSystem = args: { _nixosSystem = args; };
        };
        outPath = "/nix/store/00000000000000000000000000000000-source";
      };
      inputs = mapAttrs (name: _: if name == "self" then { outPath = flake; } else stubInput) (
        builtins.functionArgs outputs
      );
    in
    (outputs inputs).nixosConfigurations.${hostName}._nixosSystem;

  hostModules = if flake != null then flakeSystem.modules else [ configuration ];
  specialArgs = if flake != null then flakeSystem.specialArgs or { } else { };

  host = evalModules {
    modules = hostModules;
    args = specialArgs // {
      inherit pkgs;
      modulesPath = "/run/current-system/nixpkgs/nixos/modules";
    };
    # containers.<name>.config is a NixOS configuration of its own.
    isModuleLoc = loc: length loc == 3 && elemAt loc 0 == "containers" && elemAt loc 2 == "config";
  };

  failed = assertions: map (a: a.message) (filter (a: !a.assertion) (nullToEmpty' assertions));
  nullToEmpty' = x: if x == null then [ ] else x;

  # What nixos-containers.nix injects into every container (docs/nixos-facts.md).
  containerDefaults = name: {
    boot.isNspawnContainer = true;
    networking.hostName = lib.mkDefault name;
    networking.useDHCP = false;
  };

  evalContainer =
    name: container:
    let
      inner = evalModules {
        modules = (container.config or { modules = [ ]; }).modules ++ [ (containerDefaults name) ];
        args = {
          inherit pkgs;
        };
      };
      c = inner.config;
    in
    container
    // {
      config = {
        users = nullToEmpty (c.users or null);
        systemd.services = nullToEmpty ((nullToEmpty (c.systemd or null)).services or null);
        networking = nullToEmpty (c.networking or null);
        system.stateVersion = (nullToEmpty (c.system or null)).stateVersion or null;
        failedAssertions = failed (c.assertions or null);
      };
    };

  config = host.config;
  hostServices = nullToEmpty ((nullToEmpty (config.systemd or null)).services or null);
in
{
  files = filter (f: builtins.substring 0 1 f == "/") host.files;
  failedAssertions = failed (config.assertions or null);
  warnings = nullToEmpty' (config.warnings or null);
  containers = mapAttrs evalContainer (nullToEmpty (config.containers or null));
  units = lib.filterAttrs (name: _: lib.hasPrefix "container@" name) hostServices;
  # The host's other units the configuration declares, and its nginx (both
  # rendered by the stand-in as nixpkgs' modules render them).
  hostUnits = {
    services = lib.filterAttrs (name: _: !(lib.hasPrefix "container@" name)) hostServices;
    sockets = nullToEmpty ((nullToEmpty (config.systemd or null)).sockets or null);
    timers = nullToEmpty ((nullToEmpty (config.systemd or null)).timers or null);
  };
  nginx = nullToEmpty ((nullToEmpty (config.services or null)).nginx or null);
  nat = nullToEmpty ((nullToEmpty (config.networking or null)).nat or null);
  hostName = (nullToEmpty (config.networking or null)).hostName or null;
  stateVersion = (nullToEmpty (config.system or null)).stateVersion or null;
}
