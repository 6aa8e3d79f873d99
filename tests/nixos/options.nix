# Lists the options a NixOS module declares, with their defaults as README.md shows them, by
# evaluating the module with a minimal stand-in for nixpkgs' lib (nixpkgs cannot be fetched on
# the test machine). Only `options` is evaluated, so the module's config section is never
# forced. Used by tests/systemd_units.rs:
#   nix-instantiate --eval --strict --json tests/nixos/options.nix --arg module ./nixos/module.nix
{ module }:
let
  option = attrs: attrs // { _isOption = true; };
  types = rec {
    str = "str"; bool = "bool"; path = "path"; package = "package";
    ints = { positive = "int"; unsigned = "int"; };
    nullOr = t: "null or ${t}";
    listOf = t: "list of ${t}";
    enum = values: "one of ${builtins.toJSON values}";
    submodule = m: { _submodule = m; };
  };
  lib = {
    inherit types;
    mkOption = option;
    mkEnableOption = what: option { default = false; description = "Whether to enable ${what}."; };
    literalExpression = text: { _literal = text; };
    mkIf = cond: value: { };
  };
  # Everything the module reads from config/pkgs lazily, under `cfg` defaults.
  config.services.farmd = { emulatedSystems = [ ]; settings.build.builders = null; settings.build.extra_platforms = [ ]; };
  pkgs = { formats.toml = _: { type = "toml"; generate = _: _: "farmd.toml"; }; nixfarm = "pkgs.nixfarm"; };
  evaluated = import module { inherit config pkgs lib; };

  render = o:
    if o ? defaultText then (if o.defaultText ? _literal then o.defaultText._literal else o.defaultText)
    else if o ? default then builtins.toJSON o.default
    else null;
  walk = prefix: set:
    builtins.concatLists (map
      (name:
        let v = set.${name}; path = if prefix == "" then name else "${prefix}.${name}"; in
        if builtins.isAttrs v && v ? _isOption then
          [{ name = path; default = render v; }]
          ++ (if builtins.isAttrs (v.type or null) && v.type ? _submodule then walk path v.type._submodule.options else [ ])
        else if builtins.isAttrs v then walk path v
        else [ ])
      (builtins.attrNames set));
in
walk "" evaluated.options
