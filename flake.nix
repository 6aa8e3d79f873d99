# nixfarm as a flake: the package, the NixOS modules, an overlay, and a NixOS VM test.
#
# NOT RUN WHERE IT WAS WRITTEN: the machine nixfarm is developed on cannot download nixpkgs, so
# neither the package build nor the VM test below has ever been evaluated or run; there is no
# flake.lock yet (the first `nix flake check` writes it). What is checked there: every .nix file
# parses (`nix-instantiate --parse`, tests/systemd_units.rs), the option names and defaults of
# the modules are read by Nix from the modules themselves and must be in README.md, and the unit
# files the package installs are verified and run under a real systemd (tests/systemd_nspawn.rs).
# Run `nix flake check` (the VM test needs KVM) before relying on this file.
{
  description = "nixfarm: a build farm for NixOS fleets";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      overlays.default = final: prev: {
        nixfarm = final.callPackage ./nixos/package.nix { src = self; };
      };

      packages = forAllSystems (pkgs: rec {
        nixfarm = pkgs.callPackage ./nixos/package.nix { src = self; };
        default = nixfarm;
      });

      # The modules bring the overlay, so `services.farmd.package` defaults to this flake's build.
      nixosModules = {
        default = { imports = [ ./nixos/module.nix ]; nixpkgs.overlays = [ self.overlays.default ]; };
        client = ./nixos/client.nix;
      };

      checks.x86_64-linux.vm = import ./nixos/vm-test.nix {
        pkgs = nixpkgs.legacyPackages.x86_64-linux;
        inherit self;
      };
    };
}
