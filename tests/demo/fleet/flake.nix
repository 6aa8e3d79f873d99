# The demo fleet: three "machines" whose toplevels are plain derivations sharing most of
# their closure, the way real NixOS systems share glibc and systemd.
{
  inputs.pkgs.url = "@PKGS_URL@";

  outputs = { self, pkgs }:
    let
      p = pkgs.lib;
      base = p.mkPackage { name = "demo-base"; text = "base ${toString p.version}"; };
      kernel = p.mkPackage { name = "demo-kernel"; text = "kernel"; deps = [ base ]; };
      machine = name: {
        config.system.build.toplevel = p.mkPackage {
          name = "nixos-system-${name}";
          text = "toplevel of ${name}";
          deps = [ kernel (p.mkPackage { name = "${name}-etc"; text = "etc of ${name}"; deps = [ base ]; }) ];
        };
      };
    in {
      nixosConfigurations = {
        pi3 = machine "pi3";
        laptop = machine "laptop";
        server = machine "server";
      };
    };
}
