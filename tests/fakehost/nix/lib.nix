# A minimal stand-in for nixpkgs `lib`, enough to evaluate the Pluto module and
# the simulated host's configuration with Debian's Nix 2.8 (too old for real
# nixpkgs).
#
# Simpler than the real thing: only the functions and types used here exist;
# names, argument order, option/type attribute names (`_type = "option"`,
# `check`, `description`) and messages follow nixpkgs lib/options.nix,
# lib/types.nix, lib/modules.nix and lib/strings.nix. A module that uses
# anything else fails here with "attribute missing", which is the point: it
# keeps the module to a well-known subset of lib.
let
  inherit (builtins)
    all
    attrNames
    concatStringsSep
    elem
    filter
    foldl'
    isAttrs
    isBool
    isFunction
    isInt
    isList
    isString
    length
    listToAttrs
    mapAttrs
    match
    replaceStrings
    stringLength
    substring
    toString
    ;

  mkOptionType =
    {
      name,
      description ? name,
      check ? (_: true),
      # "equal": all definitions must agree; "list": concatenated; "attrs": merged.
      mergeKind ? "equal",
      elemType ? null,
    }:
    {
      _type = "option-type";
      inherit name description check mergeKind elemType;
    };

  addCheck = type: extra: type // { check = x: type.check x && extra x; };

  betweenDesc = lowest: highest: "${toString lowest} and ${toString highest} (both inclusive)";
  between =
    lowest: highest:
    addCheck types.int (x: x >= lowest && x <= highest)
    // {
      name = "intBetween";
      description = "integer between ${betweenDesc lowest highest}";
    };
  unsign =
    bit: range:
    between 0 (range - 1)
    // {
      name = "unsignedInt${toString bit}";
      description = "${toString bit} bit unsigned integer; between ${betweenDesc 0 (range - 1)}";
    };

  types = rec {
    bool = mkOptionType {
      name = "bool";
      description = "boolean";
      check = isBool;
    };
    int = mkOptionType {
      name = "int";
      description = "signed integer";
      check = isInt;
    };
    ints = {
      inherit between;
      unsigned = addCheck int (x: x >= 0) // {
        name = "unsignedInt";
        description = "unsigned integer, meaning >=0";
      };
      positive = addCheck int (x: x > 0) // {
        name = "positiveInt";
        description = "positive integer, meaning >0";
      };
      u16 = unsign 16 65536;
      u32 = unsign 32 4294967296;
    };
    port = ints.u16;
    str = mkOptionType {
      name = "str";
      description = "string";
      check = isString;
    };
    nonEmptyStr = addCheck str (x: match "[[:space:]]*" x == null) // {
      name = "nonEmptyStr";
      description = "non-empty string";
    };
    strMatching =
      pattern:
      addCheck str (x: match pattern x != null)
      // {
        name = "strMatching ${builtins.toJSON pattern}";
        description = "string matching the pattern ${pattern}";
      };
    path = mkOptionType {
      name = "path";
      description = "path";
      check = x: isString x && substring 0 1 x == "/";
    };
    enum =
      values:
      mkOptionType {
        name = "enum";
        description = "one of ${concatStringsSep ", " (map builtins.toJSON values)}";
        check = x: elem x values;
      };
    nullOr =
      elemType:
      mkOptionType {
        name = "nullOr";
        description = "null or ${elemType.description}";
        check = x: x == null || elemType.check x;
        inherit (elemType) mergeKind;
        inherit elemType;
      };
    listOf =
      elemType:
      mkOptionType {
        name = "listOf";
        description = "list of ${elemType.description}";
        check = x: isList x && all elemType.check x;
        mergeKind = "list";
        inherit elemType;
      };
    # lib/types.nix submodule: each definition is a module; the option's value is
    # the evaluated config (modules.nix evaluates it, with `name` for attrsOf).
    submodule =
      module:
      mkOptionType {
        name = "submodule";
        description = "submodule";
        check = x: isAttrs x || isFunction x;
        mergeKind = "submodule";
      }
      // {
        modules = [ module ];
      };
    attrsOf =
      elemType:
      mkOptionType {
        name = "attrsOf";
        description = "attribute set of ${elemType.description}";
        check = x: isAttrs x && all (n: elemType.check x.${n}) (attrNames x);
        mergeKind = "attrs";
        inherit elemType;
      };
  };

  escapeShellArg =
    arg:
    let
      string = toString arg;
    in
    if match "[[:alnum:],._+:@%/-]+" string == null then
      "'${replaceStrings [ "'" ] [ "'\\''" ] string}'"
    else
      string;

  mkOverride = priority: content: {
    _type = "override";
    inherit priority content;
  };
in
rec {
  inherit types mkOptionType escapeShellArg mkOverride;
  inherit (builtins)
    attrNames
    attrValues
    concatLists
    concatStringsSep
    elem
    filter
    foldl'
    hasAttr
    head
    isAttrs
    isFunction
    isList
    isString
    length
    mapAttrs
    toJSON
    ;

  # Same closed argument set as nixpkgs: a misspelt attribute is an error there too.
  mkOption =
    {
      default ? null,
      defaultText ? null,
      example ? null,
      description ? null,
      relatedPackages ? null,
      type ? null,
      apply ? null,
      internal ? null,
      visible ? null,
      readOnly ? null,
    }@attrs:
    attrs // { _type = "option"; };

  mkEnableOption =
    name:
    mkOption {
      default = false;
      example = true;
      description = "Whether to enable ${name}.";
      type = types.bool;
    };

  literalExpression = text: {
    _type = "literalExpression";
    inherit text;
  };

  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  mkMerge = contents: {
    _type = "merge";
    inherit contents;
  };
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  mkOptionDefault = mkOverride 1500;

  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  optionalAttrs = cond: attrs: if cond then attrs else { };
  optionalString = cond: s: if cond then s else "";

  concatMapStringsSep = sep: f: list: concatStringsSep sep (map f list);
  concatMapStrings = concatMapStringsSep "";
  escapeShellArgs = concatMapStringsSep " " escapeShellArg;
  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
  hasSuffix =
    suffix: s:
    let
      cut = stringLength s - stringLength suffix;
    in
    cut >= 0 && substring cut (stringLength suffix) s == suffix;
  # lib/strings.nix removeSuffix and (for plain decimal numbers) toInt.
  removeSuffix =
    suffix: s:
    let
      cut = stringLength s - stringLength suffix;
    in
    if cut >= 0 && substring cut (stringLength suffix) s == suffix then substring 0 cut s else s;
  toInt =
    s:
    let
      number = if builtins.match "[0-9]+" s != null then builtins.fromJSON s else null;
    in
    if builtins.isInt number then number else throw "Could not convert ${s} to int.";
  nameValuePair = name: value: { inherit name value; };
  mapAttrs' = f: set: listToAttrs (map (n: f n set.${n}) (attrNames set));
  mapAttrsToList = f: set: map (n: f n set.${n}) (attrNames set);
  genAttrs =
    names: f:
    listToAttrs (
      map (n: {
        name = n;
        value = f n;
      }) names
    );
  filterAttrs =
    pred: set:
    listToAttrs (
      map (n: {
        name = n;
        value = set.${n};
      }) (filter (n: pred n set.${n}) (attrNames set))
    );
  importJSON = path: builtins.fromJSON (builtins.readFile path);
  versionAtLeast = v: min: builtins.compareVersions v min >= 0;
}
