# nixfarm.client: a fleet machine that upgrades from the farm's cache and never builds what
# the farm built. Import on every machine of the fleet flake (the farm host too, if it is one).
{ config, lib, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption types;
  cfg = config.nixfarm.client;
in
{
  options.nixfarm.client = {
    enable = mkEnableOption "upgrading from a nixfarm build farm's binary cache";

    cacheUrl = mkOption {
      type = types.str;
      example = "https://cache.example.org";
      description = "The URL the farm's cache is served at (the web server in front of `[cache] url`).";
    };

    publicKey = mkOption {
      type = types.str;
      example = "cache.example.org-1:AbCd…=";
      description = "The farm's public signing key (`farmctl keygen` printed it).";
    };

    connectTimeout = mkOption {
      type = types.ints.positive;
      default = 5;
      description = ''
        Seconds Nix waits for a cache to answer. With fallback, a laptop away from home
        builds what it cannot fetch instead of failing.
      '';
    };

    negativeCacheTtl = mkOption {
      type = types.ints.unsigned;
      default = 60;
      description = ''
        Seconds Nix remembers that the cache lacked a path (Nix's narinfo-cache-negative-ttl,
        default 3600), so a path the farm just published is seen within a minute.
      '';
    };

    flake = mkOption {
      type = types.str;
      example = "git+https://github.com/example/fleet";
      description = ''
        The fleet flake the farm pushes its lock commits to. system.autoUpgrade builds this
        machine's nixosConfigurations.<hostname> from it, which the farm has already built.
      '';
    };

    upgradeAt = mkOption {
      type = types.str;
      default = "04:40";
      description = ''
        When to upgrade (systemd.time(7)); after the farm's nightly run (03:00 + up to 15 min
        by default) has had time to build and publish.
      '';
    };

    randomizedDelaySec = mkOption {
      type = types.str;
      default = "20min";
      description = "Spreads the fleet's downloads (system.autoUpgrade.randomizedDelaySec).";
    };

    allowReboot = mkOption {
      type = types.bool;
      default = false;
      description = "Reboot when the kernel or initrd changed (system.autoUpgrade.allowReboot).";
    };
  };

  config = mkIf cfg.enable {
    nix.settings = {
      substituters = [ cfg.cacheUrl ];
      trusted-public-keys = [ cfg.publicKey ];
      connect-timeout = cfg.connectTimeout;
      fallback = true;
      narinfo-cache-negative-ttl = cfg.negativeCacheTtl;
      experimental-features = [ "nix-command" "flakes" ];
    };
    system.autoUpgrade = {
      enable = true;
      flake = cfg.flake;
      dates = cfg.upgradeAt;
      randomizedDelaySec = cfg.randomizedDelaySec;
      allowReboot = cfg.allowReboot;
      # Fetch the branch's newest commit (the farm's lock), not a cached older one.
      flags = [ "--refresh" ];
      persistent = true;
    };
  };
}
