# Evaluates NixOS modules the way nixpkgs lib.evalModules does (lib/modules.nix),
# for the subset the Pluto module and the simulated host's configuration use.
#
# Followed exactly: `imports` (paths, directories meaning default.nix, inline
# modules), `options`/`config` and the config shorthand, mkIf/mkMerge pushed
# down through attribute sets and decided only at the option, override
# priorities (mkDefault 1000, mkForce 50; option defaults only without
# definitions), type checks and conflict errors with nixpkgs' wording.
# Simpler than the real thing: options nixpkgs declares (containers, systemd,
# users, ...) are not declared here; their definitions are merged freely
# (attribute sets recursively, lists concatenated, other values must agree,
# a value whose every definition is disabled by mkIf reads as null). The
# stand-in nixos-rebuild applies the nixpkgs defaults it needs itself.
{ lib }:
let
  inherit (builtins)
    all
    attrNames
    concatLists
    concatMap
    concatStringsSep
    filter
    foldl'
    genericClosure
    head
    isAttrs
    isFunction
    isList
    isPath
    isString
    length
    listToAttrs
    mapAttrs
    removeAttrs
    toJSON
    toString
    ;

  isOption = x: isAttrs x && (x._type or null) == "option";
  showLoc = loc: concatStringsSep "." loc;
  unique = names: attrNames (listToAttrs (map (name: { inherit name; value = null; }) names));
  showValue = v: if isFunction v then "<function>" else toJSON v;
  showDefs = defs: concatStringsSep "" (map (d: "\n- In `${d.file}': ${showValue d.value}") defs);

  # A definition is an attribute set (to descend into) rather than a value.
  isDefAttrs =
    def:
    let
      type = def._type or null;
    in
    if type == "if" || type == "override" then
      isDefAttrs def.content
    else if type == "merge" then
      all isDefAttrs def.contents
    else
      isAttrs def && type == null && !(def ? outPath);

  # mkIf/mkMerge/mkOverride around an attribute set move onto its attributes
  # without deciding the condition (lib/modules.nix pushDownProperties).
  pushDown =
    def:
    let
      type = def.value._type or null;
      wrap = f: map (d: d // { value = mapAttrs (_: f) d.value; }) (pushDown (def // { value = def.value.content; }));
    in
    if type == "merge" then
      concatMap (c: pushDown (def // { value = c; })) def.value.contents
    else if type == "if" then
      wrap (lib.mkIf def.value.condition)
    else if type == "override" then
      wrap (lib.mkOverride def.value.priority)
    else
      [ def ];

  # At an option: decide conditions, keep priorities (dischargeProperties).
  discharge =
    def:
    let
      v = def.value;
      type = v._type or null;
    in
    if type == "merge" then
      concatMap (c: discharge (def // { value = c; })) v.contents
    else if type == "if" then
      (if v.condition then discharge (def // { value = v.content; }) else [ ])
    else if type == "override" then
      map (d: d // { priority = v.priority; }) (discharge (def // { value = v.content; }))
    else
      [ (def // { priority = def.priority or 100; }) ];

  highestPriority =
    defs:
    let
      discharged = concatMap discharge defs;
      best = foldl' (p: d: if d.priority < p then d.priority else p) 9999 discharged;
    in
    filter (d: d.priority == best) discharged;

  mergeEqual =
    loc: defs:
    if all (d: d.value == (head defs).value) defs then
      (head defs).value
    else
      throw "The option `${showLoc loc}' has conflicting definition values:${showDefs defs}";

  mergeOption =
    loc: opt: defs:
    let
      winners = highestPriority defs;
      type = if opt.type or null == null then lib.types.str // { check = _: true; } else opt.type;
      wrong = filter (d: !type.check d.value) winners;
      # attrsOf (submodule m): per name, the module evaluated with every definition
      # of that name (lib/types.nix attrsOf + submoduleWith, `name` as module argument).
      submodules =
        let
          names = unique (concatMap (d: attrNames d.value) winners);
          defsOf = name: map (d: d.value.${name}) (filter (d: d.value ? ${name}) winners);
        in
        listToAttrs (
          map (name: {
            inherit name;
            value =
              (evalModules {
                modules = type.elemType.modules ++ defsOf name;
                args = {
                  inherit name;
                };
              }).config;
          }) names
        );
      merged =
        if type.mergeKind == "attrs" && (type.elemType.mergeKind or null) == "submodule" then
          submodules
        else if type.mergeKind == "list" then
          concatLists (map (d: d.value) winners)
        else if type.mergeKind == "attrs" then
          foldl' (acc: d: acc // d.value) { } winners
        else
          mergeEqual loc winners;
      value =
        if winners == [ ] then
          (
            if opt ? default then
              opt.default
            else
              throw "The option `${showLoc loc}' is used but not defined."
          )
        else if wrong != [ ] then
          throw "A definition for option `${showLoc loc}' is not of type `${type.description}'. Definition values:${showDefs wrong}"
        else
          merged;
    in
    if opt ? apply && opt.apply != null then opt.apply value else value;

  mergeFreeform =
    loc: isModuleLoc: defs:
    let
      winners = highestPriority defs;
      values = map (d: d.value) winners;
    in
    if isModuleLoc loc then
      {
        _type = "modules";
        modules = values;
      }
    else if winners == [ ] then
      null
    else if all isList values then
      concatLists values
    else
      mergeEqual loc winners;

  # Build the config tree at `loc` from declarations and definitions.
  mergeAt =
    loc: isModuleLoc: decl: defs:
    if isOption decl then
      mergeOption loc decl defs
    else if decl != null || (defs != [ ] && all (d: isDefAttrs d.value) defs && !(isModuleLoc loc)) then
      let
        pushed = concatMap pushDown defs;
        names = unique ((if decl == null then [ ] else attrNames decl) ++ concatMap (d: attrNames d.value) pushed);
        defsOf = name: map (d: d // { value = d.value.${name}; }) (filter (d: d.value ? ${name}) pushed);
        # A set of options declared by one module (services.pluto) is closed;
        # elsewhere undeclared names are nixpkgs options this harness lacks.
        closed = decl != null && decl != { } && all (n: isOption decl.${n}) (attrNames decl);
        undeclared = filter (n: !(decl ? ${n})) names;
      in
      if closed && undeclared != [ ] then
        throw "The option `${showLoc (loc ++ [ (head undeclared) ])}' does not exist. Definition values:${showDefs (defsOf (head undeclared))}"
      else
      listToAttrs (
        map (name: {
          inherit name;
          value = mergeAt (loc ++ [ name ]) isModuleLoc (if decl == null then null else decl.${name} or null) (defsOf name);
        }) names
      )
    else
      mergeFreeform loc isModuleLoc defs;

  # Declarations of all modules in one tree; declaring an option twice is an error.
  mergeDeclarations =
    loc: a: b:
    if isOption a || isOption b then
      throw "The option `${showLoc loc}' is declared more than once."
    else
      a // mapAttrs (name: value: if a ? ${name} then mergeDeclarations (loc ++ [ name ]) a.${name} value else value) b;

  moduleConfig =
    m:
    if m ? config || m ? options then
      m.config or { }
    else
      removeAttrs m [ "imports" "_file" "key" "meta" "disabledModules" ];
  # `args` are the module arguments besides config, options and lib (pkgs,
  # modulesPath, ...). `isModuleLoc` marks undeclared submodule-valued places
  # (containers.<name>.config) whose definitions are returned as modules.
  evalModules =
    {
      modules,
      args ? { },
      isModuleLoc ? (_: false),
    }:
    let
      allArgs = args // { inherit lib config options; };
      load =
        key: m:
        let
          imported = if isPath m || isString m then import m else m;
          applied = if isFunction imported then imported allArgs else imported;
        in
        {
          key = if isPath m || isString m then toString m else key;
          module = applied;
        };
      closure = genericClosure {
        startSet = builtins.genList (i: load "<module ${toString i}>" (builtins.elemAt modules i)) (length modules);
        operator =
          item:
          builtins.genList (i: load "${item.key}:anon-${toString i}" (builtins.elemAt (item.module.imports or [ ]) i)) (
            length (item.module.imports or [ ])
          );
      };
      options = foldl' (mergeDeclarations [ ]) { } (map (item: item.module.options or { }) closure);
      definitions = map (item: {
        file = item.key;
        value = moduleConfig item.module;
      }) closure;
      config = mergeAt [ ] isModuleLoc options definitions;
    in
    {
      inherit config options;
      files = map (item: item.key) closure;
    };
in
{
  inherit evalModules;
}
