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
    i:
    if i.installMode == "nix" then
      pkgs.${i.juliaPackage}.withPackages [ "Pluto" ]
    else
      pkgs.${i.juliaPackage};

  # Without a private network the container shares the host's network and loopback
  # (docs/nixos-facts.md); with one, Pluto listens on the container's address.
  listenAddress = i: if i.privateNetwork then i.localAddress else "127.0.0.1";
  stateDir = "/var/lib/pluto";

  # A session's Pluto lives under /<name>/ (ServerOptions.base_url, v0.19.11+). The
  # main instance runs launcher.jl byte for byte as before sessions existed, so
  # upgrading restarts nothing; a session runs the same launcher with that one
  # option added (docs/pluto-facts.md, "Pluto under a path").
  launcher =
    i:
    let
      text = builtins.readFile ./launcher.jl;
      port = "    port = parse(Int, setting(\"PLUTO_PORT\")),\n";
      withBaseUrl = builtins.replaceStrings [ port ] [
        (port + "    base_url = setting(\"PLUTO_BASE_URL\"),\n")
      ] text;
    in
    if (i.baseUrl or "/") == "/" then
      ./launcher.jl
    else if withBaseUrl == text then
      throw "services.pluto: launcher.jl no longer has the line the session launcher extends"
    else
      builtins.toFile "pluto-session-launcher.jl" withBaseUrl;

  # Julia and Pkg size their parallelism by the host's CPUs (Pkg precompiles with
  # min(CPU_THREADS + 1, 16) tasks; Pluto gives each notebook worker
  # JULIA_NUM_THREADS threads, else about half the CPUs): on a big host that
  # overshoots the container's CPUQuota and memory. One per quota'd core instead.
  cores =
    i:
    let
      percent = lib.toInt (lib.removeSuffix "%" i.cpuQuota);
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
  hardening = i: {
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
    ReadWritePaths = [ i.dataDir ]; # the notebooks (the depot is StateDirectory)
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
  # Options of one Pluto instance: the main one (services.pluto.*, unchanged
  # for current users) and each of services.pluto.instances.<name>, as nixpkgs
  # does for services with several instances (e.g. services.redis.servers).
  instanceOptions = defaults: {
    containerName = mkOption {
      type = types.strMatching "[a-z]([a-z0-9-]*[a-z0-9])?";
      default = defaults.containerName;
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
      default = defaults.dataDir;
      description = ''
        Host directory with the notebooks, bind-mounted read-write at the same
        path inside the container. It must exist, owned by
        {option}`services.pluto.uid`, before the container starts.
      '';
    };

    secretDir = mkOption {
      type = types.path;
      default = defaults.secretDir;
      description = ''
        Host directory holding `secret`, the access token of Pluto's link,
        bind-mounted read-only. Outside the Nix store on purpose. The file is
        owned by {option}`services.pluto.uid` with mode 0400 so the running
        server can re-read it when the secret is rotated.
      '';
    };

    # Instances have no default: each needs a uid of its own, so that no
    # session can read another's notebooks on the host.
    uid = mkOption (
      {
        type = types.ints.between 1000 65533;
        description = ''
          Fixed uid of the `pluto` user. Without a user namespace it is the same
          uid on the host, which owns {option}`services.pluto.dataDir`; it must
          not belong to a host account.
        '';
      }
      // lib.optionalAttrs (defaults.uid != null) { default = defaults.uid; }
    );

    gid = mkOption (
      {
        type = types.ints.between 1000 65533;
        description = "Fixed gid of the `pluto` group (see {option}`services.pluto.uid`).";
      }
      // lib.optionalAttrs (defaults.uid != null) { default = defaults.uid; }
    );

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
      default = defaults.privateNetwork;
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

  sessionOptions = {
    baseUrl = mkOption {
      type = types.strMatching "/([a-z0-9-]+/)*";
      default = "/";
      description = ''
        Path under which Pluto serves (Pluto's `base_url`, v0.19.11+), so that
        nginx can pass `https://<publicHost>/<name>/` on unchanged.
      '';
    };

    until = mkOption {
      type = types.nullOr (types.strMatching "[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} UTC");
      default = null;
      example = "2026-12-28 17:00:00 UTC";
      description = ''
        End of a public session, as a systemd calendar time. When set, the
        instance is reachable at `https://<publicHost><baseUrl>` through its
        invitation gate, and a timer stops its container at this time.
      '';
    };

    offline = mkOption {
      type = types.bool;
      default = false;
      description = "Refuse the session's outgoing traffic beyond its host end (no internet).";
    };
  };

  isSession = i: (i.until or null) != null;

  # Who reaches a session and what its notebooks may reach, enforced in the
  # session's own container (its firewall, networking.firewall.extraCommands of
  # nixpkgs' firewall-iptables.nix): Pluto's uid has no capabilities, so notebook
  # code cannot undo it. In: Pluto's port from the gate only. Out: answers to the
  # gate always pass. Offline: nothing else. Online: the internet, but no private
  # or link-local address, because the NAT of online sessions turns on the host's
  # forwarding (nixpkgs nixos/modules/services/networking/nat.nix sets
  # net.ipv4.conf.all.forwarding), which would otherwise carry a guest to another
  # session, the main Pluto's network, the host's LAN or a cloud's metadata
  # service. DNS (port 53) stays open for resolvers on the LAN.
  sessionFirewall =
    i:
    let
      chain = "pluto-session";
      refused = [
        "10.0.0.0/8"
        "172.16.0.0/12"
        "192.168.0.0/16"
        "100.64.0.0/10"
        "169.254.0.0/16"
      ];
      remove = ''
        iptables -w -D OUTPUT -j ${chain} 2>/dev/null || true
        iptables -w -F ${chain} 2>/dev/null || true
        iptables -w -X ${chain} 2>/dev/null || true
      '';
    in
    {
      # The gate connects from the host end; with the host forwarding, a neighbour
      # that routes to the container would otherwise reach Pluto too.
      allowedTCPPorts = [ ];
      extraCommands =
        remove
        + ''
          iptables -w -A nixos-fw -p tcp -s ${i.hostAddress} --dport ${toString i.port} -j nixos-fw-accept
          iptables -w -N ${chain}
          iptables -w -A ${chain} -o lo -j RETURN
          iptables -w -A ${chain} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
        ''
        + (
          if i.offline then
            ''
              iptables -w -A ${chain} -j REJECT
            ''
          else
            ''
              iptables -w -A ${chain} -p udp --dport 53 -j RETURN
              iptables -w -A ${chain} -p tcp --dport 53 -j RETURN
            ''
            + lib.concatMapStrings (range: ''
              iptables -w -A ${chain} -d ${range} -j REJECT
            '') refused
        )
        + ''
          iptables -w -A OUTPUT -j ${chain}
        '';
      extraStopCommands = remove;
    };

  # The container of one instance (`i`: services.pluto or one of its instances).
  container =
    i:
    {
          # Without autoStart a switch never restarts a changed container (docs/nixos-facts.md).
          autoStart = true;
          inherit (i) ephemeral privateNetwork;
          hostAddress = if i.privateNetwork then i.hostAddress else null;
          localAddress = if i.privateNetwork then i.localAddress else null;
          # The only host directories the container sees. Bind mounts are
          # read-only unless isReadOnly = false (docs/nixos-facts.md).
          bindMounts = {
            ${i.dataDir} = {
              hostPath = i.dataDir;
              isReadOnly = false;
            };
            ${i.secretDir} = {
              hostPath = i.secretDir;
              isReadOnly = true;
            };
          }
          // lib.optionalAttrs i.ephemeral {
            # The ephemeral root is a tmpfs copy (/run/nixos-containers): keep the
            # depot on the host instead, owned by the uid like the notebooks.
            ${stateDir} = {
              hostPath = "/var/lib/pluto-state/${i.containerName}";
              isReadOnly = false;
            };
          };
  
          config =
            { ... }:
            {
              system.stateVersion = i.stateVersion;
              # Sharing the host's network, the container must not touch the
              # host's firewall (docs/nixos-facts.md); with its own, open only Pluto.
              networking.firewall =
                if i.privateNetwork then
                  {
                    enable = true;
                    allowedTCPPorts = [ i.port ];
                  }
                  // lib.optionalAttrs (isSession i) (sessionFirewall i)
                else
                  { enable = false; };
  
              # A static uid, not DynamicUser: the host-side owner of dataDir
              # must be known before the container exists (docs/nixos-facts.md).
              users.users.pluto = {
                isSystemUser = true;
                uid = i.uid;
                group = "pluto";
                home = stateDir;
              };
              users.groups.pluto.gid = i.gid;
  
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
                  JULIA_PLUTO_NEW_NOTEBOOKS_DIR = i.dataDir;
                  JULIA_PLUTO_SHOW_BANNER = "0";
                  PLUTO_HOST = listenAddress i;
                  PLUTO_PORT = toString i.port;
                  PLUTO_NOTEBOOK_DIR = i.dataDir;
                  PLUTO_SECRET_FILE = "${i.secretDir}/secret";
                  PLUTO_INSTALL_MODE = i.installMode;
                  PLUTO_VERSION = i.plutoVersion;
                  JULIA_NUM_THREADS = toString (cores i);
                  JULIA_NUM_PRECOMPILE_TASKS = toString (cores i);
                }
                // lib.optionalAttrs ((i.baseUrl or "/") != "/") { PLUTO_BASE_URL = i.baseUrl; };
                serviceConfig =
                  {
                    ExecStart = lib.escapeShellArgs [
                      "${julia i}/bin/julia"
                      "--startup-file=no"
                      "--history-file=no"
                      "${launcher i}"
                    ];
                    User = "pluto";
                    Group = "pluto";
                    StateDirectory = "pluto";
                    StateDirectoryMode = "0700";
                    WorkingDirectory = i.dataDir;
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
                  // lib.filterAttrs (name: _: !(builtins.elem name i.hardeningExceptions)) (hardening i);
              };
            };
        };

  assertionsFor = prefix: i: [
    {
      assertion = pkgs ? ${i.juliaPackage};
      message = "${prefix}.juliaPackage: pkgs has no attribute \"${i.juliaPackage}\".";
    }
    {
      assertion = i.ephemeral -> i.installMode == "nix";
      message = "${prefix}.ephemeral needs ${prefix}.installMode = \"nix\".";
    }
  ];

  # Host-side limits cover every process in the container, Pluto included
  # (nspawn --keep-unit with Delegate=yes; docs/nixos-facts.md).
  limits = i: {
    MemoryMax = i.memoryMax;
    MemoryHigh = i.memoryHigh;
    CPUQuota = i.cpuQuota;
    TasksMax = i.tasksMax;
  };

  main = lib.optionalAttrs cfg.enable { ${cfg.containerName} = cfg; };
  instances = lib.mapAttrs' (_: i: lib.nameValuePair i.containerName i) cfg.instances;
  sessions = lib.filterAttrs (_: i: i.until != null) instances;
  sessionDir = name: "/var/lib/pluto-sessions/${name}";
  gateSocket = name: "/run/pluto-gate/${name}.sock";
  nginxGroup = config.services.nginx.group or "nginx";

  # Hardening of the gate on the host: it parses what strangers send, so it gets
  # nothing but its socket, the two files it reads and the way to the container.
  gateHardening =
    removeAttrs (hardening { dataDir = "/"; }) [ "ReadWritePaths" ]
    // {
      DynamicUser = true; # a uid of its own, no files anywhere
      MemoryDenyWriteExecute = true; # Python needs no W+X pages
      RestrictAddressFamilies = [
        # nginx's socket, and the container's address
        "AF_UNIX"
        "AF_INET"
      ];
    };

  # The units of one public session on the host: its invitation gate (socket
  # activated; only nginx's group may connect) and the timer that ends it.
  sessionUnits = name: i: {
    sockets."pluto-gate-${name}" = {
      description = "Invitation gate of Pluto session ${name}";
      wantedBy = [ "sockets.target" ];
      socketConfig = {
        ListenStream = gateSocket name;
        SocketUser = "root";
        SocketGroup = nginxGroup;
        SocketMode = "0660";
        # A closed session leaves no socket file behind (systemd.socket(5), RemoveOnStop=).
        RemoveOnStop = true;
      };
    };
    services."pluto-gate-${name}" = {
      description = "Invitation gate of Pluto session ${name}";
      requires = [ "pluto-gate-${name}.socket" ];
      after = [ "pluto-gate-${name}.socket" ];
      environment = {
        GATE_BASE_URL = i.baseUrl;
        GATE_INVITATIONS = "${sessionDir name}/invitations.json";
        GATE_SECRET_FILE = "${i.secretDir}/secret";
        GATE_UNTIL = i.until;
        GATE_UPSTREAM = "${i.localAddress}:${toString i.port}";
      };
      serviceConfig = {
        ExecStart = "${pkgs.python3}/bin/python3 ${./gate.py}";
        # The Pluto secret and the invitation list are the session uid's and
        # root's, readable by nginx's group (fab session sets that after the
        # switch): outside the Nix store, and out of the guests' reach.
        SupplementaryGroups = [ nginxGroup ];
      }
      // gateHardening;
    };
    timers."pluto-session-end-${name}" = {
      wantedBy = [ "timers.target" ];
      # Persistent: a host that was down at the end runs it when it boots.
      timerConfig = {
        OnCalendar = i.until;
        Persistent = true;
      };
    };
    services."pluto-session-end-${name}" = {
      description = "End of Pluto session ${name}";
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${pkgs.systemd}/bin/systemctl stop container@${name}.service";
      };
    };
  };
in
{
  options.services.pluto =
    instanceOptions {
      containerName = "pluto";
      dataDir = "/data/pluto";
      secretDir = "/var/lib/pluto-secret";
      uid = 2000;
      privateNetwork = false;
    }
    // {
      enable = lib.mkEnableOption "the Pluto.jl notebook server in a nixos-container";

      instances = mkOption {
        type = types.attrsOf (
          types.submodule (
            { name, ... }:
            {
              options =
                instanceOptions {
                  containerName = name;
                  dataDir = "/data/pluto-sessions/${name}";
                  secretDir = "/var/lib/pluto-sessions/${name}/secret";
                  uid = null;
                  privateNetwork = true;
                }
                // sessionOptions;
            }
          )
        );
        default = { };
        description = ''
          Further Pluto instances, each in a container of its own with its own
          port, data directory, secret and limits. `fab session open` adds one
          per session (files/sessions/<name>.json).
        '';
      };

      publicHost = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "pluto.example.org";
        description = "Virtual host of the host's nginx that serves the sessions.";
      };

      sslCertificate = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "Certificate of {option}`services.pluto.publicHost`; null: ACME.";
      };

      sslCertificateKey = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "Key of {option}`services.pluto.sslCertificate`, outside the Nix store.";
      };
    };

  config = {
    assertions =
      lib.optionals cfg.enable (assertionsFor "services.pluto" cfg)
      ++ lib.concatLists (
        lib.mapAttrsToList (name: assertionsFor "services.pluto.instances.${name}") cfg.instances
      )
      ++ lib.optional (sessions != { }) {
        assertion = cfg.publicHost != null;
        message = "services.pluto.publicHost: sessions need the host name nginx serves them under.";
      };

    containers = lib.mapAttrs (_: container) (main // instances);

    systemd = lib.mkMerge (
      [
        {
          services = lib.mapAttrs' (
            name: i: lib.nameValuePair "container@${name}" { serviceConfig = limits i; }
          ) (main // instances);
        }
      ]
      ++ lib.mapAttrsToList sessionUnits sessions
    );

    # https://<publicHost>/<name>/ of every session, through its gate. Rendered by
    # nixpkgs' nginx module (nixos/modules/services/web-servers/nginx/default.nix);
    # the host's other virtual hosts and settings are not touched.
    services.nginx = lib.mkIf (sessions != { }) {
      enable = true;
      virtualHosts.${cfg.publicHost} = {
        forceSSL = true;
        enableACME = cfg.sslCertificate == null;
        locations = lib.mapAttrs' (
          name: i:
          lib.nameValuePair i.baseUrl {
            proxyPass = "http://unix:${gateSocket name}";
            proxyWebsockets = true;
            # A notebook's WebSocket is quiet while its user thinks.
            extraConfig = "proxy_read_timeout 1d;";
          }
        ) sessions;
      }
      // lib.optionalAttrs (cfg.sslCertificate != null) {
        inherit (cfg) sslCertificate sslCertificateKey;
      };
    };

    # Online sessions reach the internet through the host (the admin sets
    # networking.nat.externalInterface); offline ones are not listed.
    networking.nat = lib.mkIf (lib.filterAttrs (_: i: !i.offline) sessions != { }) {
      enable = true;
      internalInterfaces = lib.mapAttrsToList (name: _: "ve-${name}") (
        lib.filterAttrs (_: i: !i.offline) sessions
      );
    };
  };
}
