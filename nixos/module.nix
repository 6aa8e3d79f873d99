# services.farmd: the nixfarm build farm on a NixOS host.
#
# Runs the very unit files of ../systemd (installed by the package into lib/systemd/system,
# with store paths for the binaries) and adds what NixOS knows: the user, the config rendered
# from `settings`, secrets handed in with LoadCredential= (so they can stay root-only, e.g.
# agenix/sops-nix files), the Nix settings a farm needs, the nightly timer's schedule.
# It serves nothing on the network, so there is no openFirewall.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption types literalExpression;
  cfg = config.services.farmd;
  settingsFormat = pkgs.formats.toml { };

  # Where systemd puts LoadCredential= files for farmd.service (`%d` in the unit).
  credentialsDir = "/run/credentials/farmd.service";

  # Secret settings: each becomes a credential; the config names the credential's path.
  secretPaths = [
    [ "repo" "ssh_key" ]
    [ "repo" "ssh_key_passphrase_file" ]
    [ "repo" "token_file" ]
    [ "cache" "ssh_identity" ]
  ];
  credentialName = path: lib.concatStringsSep "-" path;
  setSecrets = lib.filter (p: lib.attrByPath p null cfg.settings != null) secretPaths;
  cacheKeys = if cfg.settings.cache.url == null then [ ] else cfg.settings.cache.secret_key_files;
  cacheKeyName = i: "cache-secret-key-${toString i}";

  loadCredential =
    map (p: "${credentialName p}:${toString (lib.attrByPath p null cfg.settings)}") setSecrets
    ++ lib.imap0 (i: f: "${cacheKeyName i}:${toString f}") cacheKeys;

  rendered =
    let
      withoutNulls = lib.filterAttrsRecursive (_: v: v != null) cfg.settings;
      # No cache URL: no [cache] table at all (farmd then builds without publishing).
      base = if cfg.settings.cache.url == null then removeAttrs withoutNulls [ "cache" ] else withoutNulls;
      withSecrets = lib.foldl'
        (acc: p: lib.recursiveUpdate acc (lib.setAttrByPath p "${credentialsDir}/${credentialName p}"))
        base
        setSecrets;
    in
    if cfg.settings.cache.url == null then withSecrets
    else lib.recursiveUpdate withSecrets {
      cache.secret_key_files = lib.imap0 (i: _: "${credentialsDir}/${cacheKeyName i}") cacheKeys;
    };

  configFile = settingsFormat.generate "farmd.toml" rendered;

  secretOption = description: mkOption {
    type = types.nullOr types.path;
    default = null;
    description = ''
      ${description} A path to a file, read when farmd starts through systemd's
      LoadCredential=, so it may be owned by root with mode 0400. Never a Nix path literal
      (that would copy the secret into the world-readable store).
    '';
  };
in
{
  options.services.farmd = {
    enable = mkEnableOption "the nixfarm build farm daemon (farmd)";

    package = mkOption {
      type = types.package;
      default = pkgs.nixfarm;
      defaultText = literalExpression "pkgs.nixfarm";
      description = "The nixfarm package (farmd, farmctl and the unit files).";
    };

    user = mkOption {
      type = types.str;
      default = "farmd";
      description = "The user farmd runs as; its home is the state directory (with ~/.ssh).";
    };

    group = mkOption {
      type = types.str;
      default = "farmd";
      description = "farmd's group. Its members may use farmctl (the control socket is 0660).";
    };

    trustedUser = mkOption {
      type = types.bool;
      default = cfg.settings.build.builders != null || cfg.settings.build.extra_platforms != [ ];
      defaultText = literalExpression "settings.build.builders != null || settings.build.extra_platforms != [ ]";
      description = ''
        Whether farmd's user is in Nix's trusted-users. The Nix daemon ignores `builders` and
        `extra-platforms` from untrusted users. A trusted user can do as root does with the
        store, so this is only on when the settings need it.
      '';
    };

    emulatedSystems = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "aarch64-linux" ];
      description = ''
        Systems to build under binfmt emulation (e.g. the Raspberry Pis of the fleet): sets
        boot.binfmt.emulatedSystems, Nix's extra-platforms and settings.build.extra_platforms.
      '';
    };

    timer = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Whether farmd-nightly.timer runs `farmctl trigger --wait` on a schedule.";
      };
      onCalendar = mkOption {
        type = types.str;
        default = "*-*-* 03:00:00";
        description = "When the nightly run starts (systemd.time(7) calendar event).";
      };
      randomizedDelaySec = mkOption {
        type = types.str;
        default = "15min";
        description = "Random delay added to onCalendar (systemd.timer(5) RandomizedDelaySec=).";
      };
    };

    settings = mkOption {
      default = { };
      description = ''
        farmd's configuration (config/farmd.example.toml in the nixfarm repository lists every
        key with its default), rendered to /etc/farmd/farmd.toml. Keys not declared here are
        passed through as they are.
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          repo = {
            url = mkOption {
              type = types.str;
              example = "git@github.com:example/fleet.git";
              description = "The fleet flake's repository (ssh://, git@host:path, https://, file://).";
            };
            branch = mkOption {
              type = types.str;
              default = "main";
              description = "The branch that is built (and, by default, pushed to).";
            };
            ssh_key = secretOption "The SSH deploy key (with write access, to push the lock).";
            ssh_key_passphrase_file = secretOption "The SSH key's passphrase.";
            token_file = secretOption "An access token for https:// remotes.";
          };
          update.push = mkOption {
            type = types.enum [ "built" "always" "never" ];
            default = "built";
            description = ''
              When the updated lock is pushed: "built" only after every machine built and was
              published, so fleet machines never pull a lock the cache lacks.
            '';
          };
          build = {
            jobs = mkOption {
              type = types.ints.positive;
              default = 1;
              description = "How many machines are evaluated and built at once.";
            };
            builders = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "Nix's builders, passed verbatim (remote builders, nixbuild.net).";
            };
            extra_platforms = mkOption {
              type = types.listOf types.str;
              default = cfg.emulatedSystems;
              defaultText = literalExpression "config.services.farmd.emulatedSystems";
              description = "Nix's extra-platforms for the builds.";
            };
            timeout = mkOption {
              type = types.str;
              default = "4h";
              description = "A machine's evaluation and build are stopped after this long.";
            };
          };
          state.dir = mkOption {
            type = types.str;
            default = "/var/lib/farmd";
            description = "Checkout, logs, GC roots and history; farmd's home.";
          };
          cache = {
            url = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "sftp://farm@cache.example.org/srv/nix-cache";
              description = "Where builds are published (sftp:// or file://); null: not published.";
            };
            secret_key_files = mkOption {
              type = types.listOf types.path;
              default = [ ];
              description = ''
                Nix signing keys (`farmctl keygen`), read through LoadCredential= so they may stay
                root-only. Never Nix path literals.
              '';
            };
            ssh_identity = secretOption "The SSH identity for sftp:// caches.";
          };
          schedule.cron = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = "farmd's own schedule (crontab line); null: only the timer and farmctl trigger.";
          };
        };
      };
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = lib.all (f: !lib.hasPrefix builtins.storeDir (toString f))
          (map (p: lib.attrByPath p null cfg.settings) setSecrets ++ cacheKeys);
        message = "services.farmd: a secret file is in the Nix store (world-readable); give a path as a string, e.g. config.age.secrets.x.path";
      }
    ];

    users.users.${cfg.user} = {
      isSystemUser = true;
      group = cfg.group;
      home = cfg.settings.state.dir;
      description = "nixfarm build farm";
    };
    users.groups.${cfg.group} = { };

    environment.etc."farmd/farmd.toml".source = configFile;
    environment.systemPackages = [ cfg.package ];

    boot.binfmt.emulatedSystems = cfg.emulatedSystems;
    nix.settings = {
      extra-platforms = cfg.emulatedSystems;
      experimental-features = [ "nix-command" "flakes" ];
      trusted-users = lib.optional cfg.trustedUser cfg.user;
    };

    # The units come from the package (../systemd with store paths); these are drop-ins.
    systemd.packages = [ cfg.package ];
    systemd.services.farmd = {
      wantedBy = [ "multi-user.target" ];
      # A changed config is a reload (SIGHUP), not a restart that would cancel a run.
      reloadTriggers = [ configFile ];
      path = [ config.nix.package pkgs.git pkgs.openssh ];
      serviceConfig = {
        User = cfg.user;
        Group = cfg.group;
        LoadCredential = loadCredential;
      } // lib.optionalAttrs (cfg.settings.state.dir != "/var/lib/farmd") {
        ReadWritePaths = [ cfg.settings.state.dir ];
        Environment = [ "HOME=${cfg.settings.state.dir}" ];
        WorkingDirectory = cfg.settings.state.dir;
      };
    };
    systemd.sockets.farmd = {
      wantedBy = [ "sockets.target" ];
      socketConfig = {
        SocketUser = cfg.user;
        SocketGroup = cfg.group;
      };
    };
    systemd.services.farmd-nightly.serviceConfig = {
      User = cfg.user;
      Group = cfg.group;
    };
    systemd.timers.farmd-nightly = mkIf cfg.timer.enable {
      wantedBy = [ "timers.target" ];
      timerConfig = {
        # The empty string clears the packaged unit's OnCalendar= before setting ours.
        OnCalendar = [ "" cfg.timer.onCalendar ];
        RandomizedDelaySec = cfg.timer.randomizedDelaySec;
      };
    };
  };
}
