# Pluto.jl notebook server in a sandboxed nixos-container: the service module.
#
# Options and config, like a nixpkgs service module. `default.nix` beside it
# imports it and sets this deployment's values (settings.json) at mkDefault
# priority; `fab deploy` pushes the directory (default /etc/nixos/pluto) and the
# host configuration imports it once: `imports = [ ./pluto ];`.
# Maintained by the admins of the collective's server (see README.md).
#
# Security model in short: Pluto runs any code its users type, so it gets a
# container of its own, host-side resource limits, exactly one writable bind
# mount (the notebooks), a read-only secret, and a hardened service inside.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.pluto;
  inherit (lib) mkOption types;

  # In nix mode Pluto and its dependencies are built into the Nix store and
  # precompiled there (nixpkgs pkgs/development/julia-modules/default.nix); in
  # pkg mode the launcher installs the pinned version into the depot on first start.
  julia =
    if cfg.installMode == "nix" then
      pkgs.${cfg.juliaPackage}.withPackages [ "Pluto" ]
    else
      pkgs.${cfg.juliaPackage};

  # Without a private network the container shares the host's network and loopback
  # (docs/nixos-facts.md); with one, Pluto listens on the container's address.
  listenAddress = if cfg.privateNetwork then cfg.localAddress else "127.0.0.1";
  stateDir = "/var/lib/pluto";

  # Julia and Pkg size their parallelism by the host's CPUs (Pkg precompiles with
  # min(CPU_THREADS + 1, 16) tasks; Pluto gives each notebook worker
  # JULIA_NUM_THREADS threads, else about half the CPUs): on a big host that
  # overshoots the container's CPUQuota and memory. One per quota'd core instead.
  cores =
    let
      percent = lib.toInt (lib.removeSuffix "%" cfg.cpuQuota);
    in
    if percent < 200 then 1 else percent / 100;

  # Settings an admin may relax (hardeningExceptions) when a Julia package needs
  # them; tasks/values.py HARDENING_EXCEPTIONS lists the same names.
  relaxable = [
    "PrivateDevices"
    "ProcSubset"
    "ProtectProc"
    "RestrictAddressFamilies"
    "RestrictNamespaces"
    "SystemCallFilter"
  ];

  # Each line names what it takes away; admins may relax the ones listed in
  # hardeningExceptions when a Julia package needs it.
  hardening = {
    CapabilityBoundingSet = ""; # Pluto needs no capabilities at all
    DevicePolicy = "closed"; # no device nodes beyond the API set
    LockPersonality = true; # no switching to another execution domain
    NoNewPrivileges = true; # setuid binaries cannot raise privileges
    PrivateDevices = true; # only /dev/null, /dev/zero, /dev/random and friends
    PrivateTmp = true; # own /tmp, not shared with other services
    ProcSubset = "pid"; # /proc shows processes only, not kernel knobs
    ProtectClock = true; # cannot set the clock
    ProtectControlGroups = true; # cgroup tree read-only
    ProtectHome = true; # /home and /root invisible (the depot is under /var/lib)
    ProtectHostname = true; # cannot change the hostname
    ProtectKernelLogs = true; # no kernel log ring buffer
    ProtectKernelModules = true; # cannot load kernel modules
    ProtectKernelTunables = true; # /proc/sys and /sys read-only
    ProtectProc = "invisible"; # other users' processes are hidden
    ProtectSystem = "strict"; # whole file system read-only except the paths below
    ReadWritePaths = [ cfg.dataDir ]; # the notebooks (the depot is StateDirectory)
    RemoveIPC = true; # SysV IPC objects go away with the service
    RestrictAddressFamilies = [
      # Julia's libuv enumerates interfaces over netlink
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
      "AF_NETLINK"
    ];
    RestrictNamespaces = true; # no unprivileged namespaces (container escapes)
    RestrictRealtime = true; # no realtime scheduling to starve the host
    RestrictSUIDSGID = true; # cannot create setuid/setgid files
    SystemCallArchitectures = "native"; # no 32-bit syscall ABI
    SystemCallErrorNumber = "EPERM"; # filtered calls fail instead of killing Julia
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
    ];
    UMask = "0077"; # notebooks readable by Pluto only
  };
in
{
  options.services.pluto = {
    enable = lib.mkEnableOption "the Pluto.jl notebook server in a nixos-container";

    containerName = mkOption {
      type = types.strMatching "[a-z]([a-z0-9-]*[a-z0-9])?";
      default = "pluto";
      description = "Name of the container; its unit on the host is `container@<name>.service`.";
    };

    port = mkOption {
      # Pluto's uid has no capabilities (CapabilityBoundingSet below), so no port < 1024.
      type = types.ints.between 1024 65535;
      default = 9999;
      description = ''
        Port Pluto listens on: on the host's loopback, or on
        {option}`services.pluto.localAddress` with {option}`services.pluto.privateNetwork`.
      '';
    };

    dataDir = mkOption {
      type = types.path;
      default = "/data/pluto";
      description = ''
        Host directory with the notebooks, bind-mounted read-write at the same
        path inside the container. It must exist, owned by
        {option}`services.pluto.uid`, before the container starts.
      '';
    };

    secretDir = mkOption {
      type = types.path;
      default = "/var/lib/pluto-secret";
      description = ''
        Host directory holding `secret`, the access token of Pluto's link,
        bind-mounted read-only. Outside the Nix store on purpose. The file is
        owned by {option}`services.pluto.uid` with mode 0400 so the running
        server can re-read it when the secret is rotated.
      '';
    };

    uid = mkOption {
      type = types.ints.between 1000 65533;
      default = 2000;
      description = ''
        Fixed uid of the `pluto` user. Without a user namespace it is the same
        uid on the host, which owns {option}`services.pluto.dataDir`; it must
        not belong to a host account.
      '';
    };

    gid = mkOption {
      type = types.ints.between 1000 65533;
      default = 2000;
      description = "Fixed gid of the `pluto` group (see {option}`services.pluto.uid`).";
    };

    memoryMax = mkOption {
      type = types.strMatching "[1-9][0-9]*(\\.[0-9]+)?[KMGT]?";
      default = "4G";
      description = "`MemoryMax=` of the whole container: the kernel kills beyond it.";
    };

    memoryHigh = mkOption {
      type = types.strMatching "[1-9][0-9]*(\\.[0-9]+)?[KMGT]?";
      default = "3584M";
      description = "`MemoryHigh=` of the whole container: it is throttled beyond it.";
    };

    cpuQuota = mkOption {
      type = types.strMatching "[1-9][0-9]*%";
      default = "200%";
      example = "100%";
      description = "`CPUQuota=` of the whole container; 100% is one core.";
    };

    tasksMax = mkOption {
      type = types.ints.positive;
      default = 4096;
      description = "`TasksMax=` of the whole container (processes and threads).";
    };

    installMode = mkOption {
      type = types.enum [
        "pkg"
        "nix"
      ];
      default = "pkg";
      description = ''
        `pkg`: the launcher installs Pluto {option}`services.pluto.plutoVersion`
        with Pkg into the depot on first start (needs network, takes minutes).
        `nix`: Pluto from `julia.withPackages`, built and precompiled in the Nix
        store; the version is whatever nixpkgs' registry snapshot resolves.
      '';
    };

    plutoVersion = mkOption {
      type = types.strMatching "[0-9]+\\.[0-9]+\\.[0-9]+";
      default = "1.0.1";
      description = "Pluto version the launcher installs in `pkg` mode.";
    };

    juliaPackage = mkOption {
      type = types.str;
      default = "julia-lts";
      example = "julia_112";
      description = "Attribute of `pkgs` providing Julia (Pluto 1.0 needs Julia 1.10 to 1.12).";
    };

    privateNetwork = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Give the container its own network namespace with a veth pair:
        {option}`services.pluto.hostAddress` on the host side,
        {option}`services.pluto.localAddress` inside.
      '';
    };

    hostAddress = mkOption {
      type = types.str;
      default = "10.233.1.1";
      description = "Host end of the veth with {option}`services.pluto.privateNetwork`.";
    };

    localAddress = mkOption {
      type = types.str;
      default = "10.233.1.2";
      description = "Container address with {option}`services.pluto.privateNetwork`.";
    };

    ephemeral = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Start from an empty root on every start. Only with `nix` mode: in
        `pkg` mode Pluto would be reinstalled every time. Notebooks survive in
        {option}`services.pluto.dataDir`; Julia's depot (compile caches, packages
        notebooks add) in /var/lib/pluto-state/<containerName> on the host, so it
        neither fills the host's RAM (an ephemeral root is on /run) nor starts over.
      '';
    };

    stateVersion = mkOption {
      type = types.strMatching "[0-9]{2}\\.(05|11)";
      example = "25.05";
      description = "`system.stateVersion` of the container, fixed when it is first created.";
    };

    hardeningExceptions = mkOption {
      type = types.listOf (types.enum relaxable);
      default = [ ];
      example = [ "RestrictNamespaces" ];
      description = "Hardening settings of `pluto.service` to leave out, for Julia packages that need them.";
    };
  };

  config = lib.mkIf cfg.enable {
      assertions = [
        {
          assertion = pkgs ? ${cfg.juliaPackage};
          message = "services.pluto.juliaPackage: pkgs has no attribute \"${cfg.juliaPackage}\".";
        }
        {
          assertion = cfg.ephemeral -> cfg.installMode == "nix";
          message = "services.pluto.ephemeral needs services.pluto.installMode = \"nix\".";
        }
      ];

      # Host-side limits cover every process in the container, Pluto included
      # (nspawn --keep-unit with Delegate=yes; docs/nixos-facts.md).
      systemd.services."container@${cfg.containerName}".serviceConfig = {
        MemoryMax = cfg.memoryMax;
        MemoryHigh = cfg.memoryHigh;
        CPUQuota = cfg.cpuQuota;
        TasksMax = cfg.tasksMax;
      };

      containers.${cfg.containerName} = {
        # Without autoStart a switch never restarts a changed container (docs/nixos-facts.md).
        autoStart = true;
        inherit (cfg) ephemeral privateNetwork;
        hostAddress = if cfg.privateNetwork then cfg.hostAddress else null;
        localAddress = if cfg.privateNetwork then cfg.localAddress else null;
        # The only host directories the container sees. Bind mounts are
        # read-only unless isReadOnly = false (docs/nixos-facts.md).
        bindMounts = {
          ${cfg.dataDir} = {
            hostPath = cfg.dataDir;
            isReadOnly = false;
          };
          ${cfg.secretDir} = {
            hostPath = cfg.secretDir;
            isReadOnly = true;
          };
        }
        // lib.optionalAttrs cfg.ephemeral {
          # The ephemeral root is a tmpfs copy (/run/nixos-containers): keep the
          # depot on the host instead, owned by the uid like the notebooks.
          ${stateDir} = {
            hostPath = "/var/lib/pluto-state/${cfg.containerName}";
            isReadOnly = false;
          };
        };

        config =
          { ... }:
          {
            system.stateVersion = cfg.stateVersion;
            # Sharing the host's network, the container must not touch the
            # host's firewall (docs/nixos-facts.md); with its own, open only Pluto.
            networking.firewall =
              if cfg.privateNetwork then
                {
                  enable = true;
                  allowedTCPPorts = [ cfg.port ];
                }
              else
                { enable = false; };

            # A static uid, not DynamicUser: the host-side owner of dataDir
            # must be known before the container exists (docs/nixos-facts.md).
            users.users.pluto = {
              isSystemUser = true;
              uid = cfg.uid;
              group = "pluto";
              home = stateDir;
            };
            users.groups.pluto.gid = cfg.gid;

            systemd.services.pluto = {
              description = "Pluto.jl notebook server";
              wantedBy = [ "multi-user.target" ];
              # pkg mode downloads Pluto on first start.
              wants = [ "network-online.target" ];
              after = [ "network-online.target" ];
              # The launcher's whole interface; tests check the stand-in
              # server reads exactly these.
              environment = {
                HOME = stateDir;
                # Trailing ":" keeps Julia's bundled depots after ours (and
                # the Nix depot that withPackages appends, docs/pluto-facts.md).
                JULIA_DEPOT_PATH = "${stateDir}/depot:";
                JULIA_PLUTO_NEW_NOTEBOOKS_DIR = cfg.dataDir;
                JULIA_PLUTO_SHOW_BANNER = "0";
                PLUTO_HOST = listenAddress;
                PLUTO_PORT = toString cfg.port;
                PLUTO_NOTEBOOK_DIR = cfg.dataDir;
                PLUTO_SECRET_FILE = "${cfg.secretDir}/secret";
                PLUTO_INSTALL_MODE = cfg.installMode;
                PLUTO_VERSION = cfg.plutoVersion;
                JULIA_NUM_THREADS = toString cores;
                JULIA_NUM_PRECOMPILE_TASKS = toString cores;
              };
              serviceConfig =
                {
                  ExecStart = lib.escapeShellArgs [
                    "${julia}/bin/julia"
                    "--startup-file=no"
                    "--history-file=no"
                    "${./launcher.jl}"
                  ];
                  User = "pluto";
                  Group = "pluto";
                  StateDirectory = "pluto";
                  StateDirectoryMode = "0700";
                  WorkingDirectory = cfg.dataDir;
                  Restart = "on-failure";
                  RestartSec = 5;
                  # Julia exits 143 on SIGTERM: a stop or restart is no failure.
                  SuccessExitStatus = 143;
                  # The kernel OOM-kills one notebook's worker at the container's
                  # MemoryMax; only that notebook stops, not Pluto and every other
                  # (systemd.service(5), OOMPolicy=).
                  OOMPolicy = "continue";
                  # Hardening
                  MemoryDenyWriteExecute = false; # Julia's JIT needs W+X pages
                }
                // lib.filterAttrs (name: _: !(builtins.elem name cfg.hardeningExceptions)) hardening;
            };
          };
      };
  };
}
