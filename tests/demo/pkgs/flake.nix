# The demo's stand-in for nixpkgs: a local flake input that `nix flake update` moves.
{
  outputs = { self }: {
    lib.version = import ./version.nix;
    # A tiny "package": a text file in the store, built by /bin/sh (no nixpkgs here).
    lib.mkPackage = { name, text, deps ? [ ] }: derivation {
      inherit name deps;
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" ''
        { echo ${builtins.toJSON text}; for d in $deps; do echo "uses $d"; done; } > $out
      '' ];
    };
  };
}
