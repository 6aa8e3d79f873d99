# NixOS VM test (checks.x86_64-linux.vm in ../flake.nix): a farm host runs services.farmd,
# publishes a tiny fleet over SFTP to a cache host (sshd + nginx), and a fleet machine with
# nixfarm.client substitutes the result with signatures required.
#
# NEVER RUN WHERE IT WAS WRITTEN (no nixpkgs could be downloaded there); see ../flake.nix.
# The same cycle is run for real under systemd-nspawn by tests/systemd_nspawn.rs.
{ pkgs, self }:

let
  sshKeys = import "${pkgs.path}/nixos/tests/ssh-keys.nix" pkgs;
  # A throwaway signing key pair for this test only (made with `farmctl keygen`).
  cacheSecretKey = "nixfarm-vm-test-1:z9Z7aMY+55KS0HLcEtGwxPAAcUPWeMzhX+YET0wT3Jr63I5kpxTtXddQr/0FAJ5Sw53pSF5h2xqh5qkW9P2RIA==";
  cachePublicKey = "nixfarm-vm-test-1:+tyOZKcU7V3XUK/9BQCeUsOd6UheYdsaoeapFvT9kSA=";

  # A fleet flake without inputs: one "machine" whose toplevel is a plain derivation.
  fleetFlake = pkgs.writeText "flake.nix" ''
    {
      outputs = { self }: {
        nixosConfigurations.pi.config.system.build.toplevel = derivation {
          name = "nixos-system-pi";
          system = "x86_64-linux";
          builder = "/bin/sh";
          args = [ "-c" "echo pi > $out" ];
        };
      };
    }
  '';
in
pkgs.testers.runNixOSTest {
  name = "nixfarm";

  nodes.cache = {
    services.openssh.enable = true;
    users.users.cache = {
      isNormalUser = true;
      openssh.authorizedKeys.keys = [ sshKeys.snakeOilPublicKey ];
    };
    systemd.tmpfiles.rules = [ "d /srv/cache 0755 cache users -" ];
    services.nginx = {
      enable = true;
      virtualHosts.cache.root = "/srv/cache";
      virtualHosts.cache.default = true;
    };
    networking.firewall.allowedTCPPorts = [ 80 ];
  };

  nodes.farm = {
    imports = [ self.nixosModules.default ];
    services.farmd = {
      enable = true;
      timer.enable = false;
      settings = {
        repo.url = "file:///srv/fleet.git";
        update.enable = false;
        update.push = "never";
        # Secrets as strings naming root-only files (mode makes /etc copies, not store links);
        # the module hands them to farmd with LoadCredential=.
        cache = {
          url = "sftp://cache@cache/srv/cache";
          secret_key_files = [ "/etc/farmd/cache.sk" ];
          ssh_identity = "/etc/farmd/cache_ssh_key";
          ssh_known_hosts = "/var/lib/farmd/known_hosts";
        };
      };
    };
    environment.etc."farmd/cache.sk" = { text = cacheSecretKey; mode = "0400"; };
    environment.etc."farmd/cache_ssh_key" = { text = sshKeys.snakeOilPrivateKey; mode = "0400"; };
    environment.systemPackages = [ pkgs.git ];
  };

  nodes.client = {
    imports = [ self.nixosModules.client ];
    nixfarm.client = {
      enable = true;
      cacheUrl = "http://cache";
      publicKey = cachePublicKey;
      flake = "git+file:///srv/fleet";
    };
    # Only the test substitutes; no upgrade runs during it.
    system.autoUpgrade.enable = pkgs.lib.mkForce false;
  };

  testScript = ''
    start_all()
    cache.wait_for_unit("sshd.service")
    cache.wait_for_unit("nginx.service")

    farm.wait_for_unit("farmd.socket")
    farm.succeed(
        "mkdir -p /srv/fleet && cp ${fleetFlake} /srv/fleet/flake.nix",
        "cd /srv/fleet && git init -q -b main && git add -A"
        " && git -c user.name=t -c user.email=t@t commit -qm fleet",
        "git clone -q --bare /srv/fleet /srv/fleet.git",
    )
    farm.succeed("mkdir -p /var/lib/farmd && ssh-keyscan cache > /var/lib/farmd/known_hosts && chown -R farmd:farmd /var/lib/farmd")
    # What the nightly timer runs; exits 0 only when every machine built (and was published).
    farm.succeed("systemctl start farmd-nightly.service")
    farm.succeed("systemctl show -P Result farmd-nightly.service | grep -x success")
    farm.succeed("journalctl -u farmd -o json | grep -q FARM_MACHINE")
    toplevel = farm.succeed(
        "farmctl history -n 1 --json | ${pkgs.jq}/bin/jq -r '(if type == \"array\" then .[0] else . end).machines[0].toplevel'"
    ).strip()

    client.wait_for_unit("multi-user.target")
    client.succeed(f"nix-store -r {toplevel} --max-jobs 0 --option require-sigs true")
    client.succeed(f"test -e {toplevel}")
  '';
}
