# A stand-in for the part of nixpkgs' lib that secrets/kpki.nix and the test modules use, for
# the test suite (nixpkgs is not installed where it runs): the module system (options and types,
# definitions wrapped in mkIf, mkMerge and mkOverride at any depth, the definitions of highest
# priority winning, and as errors: undeclared options, conflicting values, wrong types, options
# used but not defined) and a few helpers. Written from nixpkgs' documented behaviour; the same
# test modules also evaluate with the real lib (`import <nixpkgs/lib>`).
let
  inherit (builtins)
    all attrNames concatMap concatStringsSep elem filter foldl' head isAttrs
    isBool isFunction isInt isList isPath isString length listToAttrs mapAttrs tail toJSON;

  wrapper = v: isAttrs v && elem (v._type or null) [ "if" "merge" "override" ];
  isOption = v: isAttrs v && (v._type or null) == "option";
  showPath = concatStringsSep ".";
  unique = list: attrNames (listToAttrs (map (n: { name = n; value = null; }) list));

  # Whether a config tree defines `path` at all, looking through every wrapper without
  # evaluating a condition (as nixpkgs pushes mkIf down to the options it defines, a condition is
  # only evaluated for the options under it).
  mentions = path: v:
    if path == [ ] then true
    else if wrapper v then
      (if v._type == "merge" then builtins.any (mentions path) v.contents else mentions path v.content)
    else isAttrs v && v ? ${head path} && mentions (tail path) v.${head path};

  # The definitions of `path` in a config tree, each with its priority (100 unless mkOverride
  # says otherwise). As in nixpkgs, the value under an mkOverride is not looked at before the
  # priorities are compared: a definition that loses is never evaluated.
  defsAt = priority: path: v:
    if path == [ ] then
      (if !wrapper v then [ { value = v; inherit priority; } ]
       else if v._type == "override" then [ { value = v.content; inherit (v) priority; } ]
       else if v._type == "if" then (if v.condition then defsAt priority [ ] v.content else [ ])
       else concatMap (defsAt priority [ ]) v.contents)
    else if wrapper v then
      (if v._type == "if" then (if mentions path v.content && v.condition then defsAt priority path v.content else [ ])
       else if v._type == "merge" then concatMap (defsAt priority path) v.contents
       else defsAt v.priority path v.content)
    else if isAttrs v && v ? ${head path} then defsAt priority (tail path) v.${head path}
    else [ ];

  # The definitions of the highest priority (the lowest number).
  winning = defs:
    let top = foldl' (m: d: if d.priority < m then d.priority else m) 10000 defs;
    in filter (d: d.priority == top) defs;

  checked = type: loc: v:
    if type.check v then v
    else throw "A definition for option `${showPath loc}' is not of type `${type.description}'.";

  # One value, all definitions equal; as nixpkgs' mergeEqualOption.
  mergeEqual = type: loc: defs:
    let v = (head defs).value;
    in if all (d: d.value == v) defs then checked type loc v
       else throw "The option `${showPath loc}' has conflicting definition values.";

  simple = description: check: rec {
    inherit description check;
    merge = loc: defs: mergeEqual { inherit description check; } loc defs;
  };

  types = rec {
    bool = simple "boolean" isBool;
    int = simple "signed integer" isInt;
    str = simple "string" isString;
    path = simple "path" (v: isPath v || (isString v && builtins.substring 0 1 v == "/"));
    attrs = {
      description = "attribute set";
      check = isAttrs;
      merge = loc: defs: foldl' (a: d: a // checked attrs loc d.value) { } defs;
    };
    unspecified = {
      description = "unspecified value";
      check = _: true;
      merge = loc: defs:
        if all (d: isList d.value) defs then concatMap (d: d.value) defs
        else mergeEqual unspecified loc defs;
    };
    enum = values: simple "one of ${toJSON values}" (v: elem v values);
    separatedString = sep: {
      description = "strings concatenated with ${toJSON sep}";
      check = isString;
      merge = loc: defs: concatStringsSep sep (map (d: checked str loc d.value) defs);
    };
    nullOr = type: {
      description = "null or ${type.description}";
      check = v: v == null || type.check v;
      merge = loc: defs:
        let nulls = filter (d: d.value == null) defs;
        in if length nulls == length defs then null
           else if nulls != [ ] then throw "The option `${showPath loc}' is defined both null and not null."
           else type.merge loc defs;
    };
    listOf = type: {
      description = "list of ${type.description}";
      check = isList;
      merge = loc: defs:
        concatMap (d: map (x: type.merge loc [ { value = x; inherit (d) priority; } ]) (checked (listOf type) loc d.value)) defs;
    };
    attrsOf = type: {
      description = "attribute set of ${type.description}";
      check = isAttrs;
      merge = loc: defs:
        let
          names = unique (concatMap (d: attrNames (checked (attrsOf type) loc d.value)) defs);
          of = n: winning (concatMap (d: defsAt d.priority [ n ] d.value) defs);
        in listToAttrs (map (n: {
          name = n;
          value = type.merge (loc ++ [ n ]) (of n);
        }) (filter (n: of n != [ ]) names));
    };
    # A submodule: `module` may be a function taking `name` (its attribute name) and `config`.
    submodule = module: {
      description = "submodule";
      check = isAttrs;
      merge = loc: defs:
        (evalModules {
          modules = [ module ] ++ map (d: { config = d.value; }) defs;
          specialArgs.name = builtins.elemAt loc (length loc - 1);
        }).config;
    };
  };

  mergeDecls = a: b:
    a // mapAttrs (n: v:
      if a ? ${n} && !isOption v && !isOption a.${n} then mergeDecls a.${n} v
      else if a ? ${n} then throw "The option `${n}' is declared twice."
      else v) b;

  evalModules = { modules, specialArgs ? { } }:
    let
      args = { inherit lib config options; } // specialArgs;
      # A module: a path, a function of the module arguments, or an attribute set, either
      # { options; config; } or config alone. (No imports: the test modules need none.)
      load = m:
        let
          f = if isPath m then import m else m;
          v = if isFunction f then f args else f;
          structured = v ? options || v ? config;
        in
        if v ? imports then throw "imports are not supported by this stand-in"
        else {
          options = if structured then v.options or { } else { };
          config = if structured then v.config or { } else v;
        };
      loaded = map load modules;
      options = foldl' mergeDecls { } (map (m: m.options) loaded);
      valueOf = loc: opt:
        let defs = winning (concatMap (m: defsAt 100 loc m.config) loaded);
        in if (opt.readOnly or false) && length defs > 1 then throw "The option `${showPath loc}' is read-only, but it is set multiple times."
           else if defs != [ ] then opt.type.merge loc defs
           else if opt ? default then opt.default
           else throw "The option `${showPath loc}' was accessed but has no value defined. Try setting the option.";
      tree = loc: decls:
        mapAttrs (n: d: if isOption d then valueOf (loc ++ [ n ]) d else tree (loc ++ [ n ]) d) decls;
      # Every definition must be of a declared option, also under a false mkIf.
      declared = loc: decls: v:
        if isOption decls then true
        else if wrapper v then all (declared loc decls) (if v._type == "merge" then v.contents else [ v.content ])
        else if isAttrs v then
          all (n:
            if decls ? ${n} then declared (loc ++ [ n ]) decls.${n} v.${n}
            else throw "The option `${showPath (loc ++ [ n ])}' does not exist.") (attrNames v)
        else throw "The option `${showPath loc}' is not an option but holds ${toJSON v}.";
      checks = all (m: declared [ ] options m.config) loaded;
      config = builtins.seq checks (tree [ ] options);
    in { inherit config options; };

  mkOption = attrs: attrs // { _type = "option"; };

  lib = {
    inherit evalModules mkOption types;
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    mkOverride = priority: content: { _type = "override"; inherit priority content; };
    mkDefault = lib.mkOverride 1000;
    mkForce = lib.mkOverride 50;
    optionals = cond: list: if cond then list else [ ];
    optionalAttrs = cond: attrs: if cond then attrs else { };
    mapAttrs' = f: attrs: listToAttrs (map (n: f n attrs.${n}) (attrNames attrs));
    nameValuePair = name: value: { inherit name value; };
    mapAttrsToList = f: attrs: map (n: f n attrs.${n}) (attrNames attrs);
    splitString = sep: s: filter isString (builtins.split (lib.escapeRegex sep) s);
    escapeRegex = builtins.replaceStrings [ "." "*" "+" "?" "[" "]" "(" ")" "|" "^" "$" "\\" ] [ "\\." "\\*" "\\+" "\\?" "\\[" "\\]" "\\(" "\\)" "\\|" "\\^" "\\$" "\\\\" ];
    setAttrByPath = path: value: builtins.foldl' (acc: name: { ${name} = acc; }) value (lib.reverseList path);
    reverseList = list: builtins.genList (i: builtins.elemAt list (length list - 1 - i)) (length list);
    attrByPath = path: default: set:
      if path == [ ] then set
      else if isAttrs set && set ? ${head path} then lib.attrByPath (tail path) default set.${head path}
      else default;
  };
in
lib
