# farmd and farmctl, with the unit files of ../systemd in lib/systemd/system (their
# /usr/local/bin and /bin/kill pointing into the store). Used by ../flake.nix.
# Never built where it was written (no nixpkgs there); see the note in ../flake.nix.
{ lib, rustPlatform, pkg-config, openssl, libssh2, zlib, coreutils, src }:

rustPlatform.buildRustPackage {
  pname = "nixfarm";
  version = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).package.version;

  src = lib.cleanSourceWith {
    inherit src;
    filter = path: type: !(lib.hasInfix "/target" path);
  };
  cargoLock.lockFile = ../Cargo.lock;

  # git2 (libgit2-sys) links openssl, libssh2 and zlib found by pkg-config; sqlite is bundled
  # (rusqlite "bundled"), zstd and liblzma are built by their -sys crates.
  nativeBuildInputs = [ pkg-config ];
  buildInputs = [ openssl libssh2 zlib ];
  env.LIBSSH2_SYS_USE_PKG_CONFIG = "1";

  # The integration tests need root, a writable Nix store, sshd and nginx (tests/run.sh runs
  # them in CI); the build sandbox has none of these.
  doCheck = false;

  postInstall = ''
    for unit in farmd.service farmd.socket farmd-nightly.service farmd-nightly.timer; do
      install -Dm0644 systemd/$unit $out/lib/systemd/system/$unit
    done
    install -Dm0644 systemd/farmd.sysusers $out/lib/sysusers.d/farmd.conf
    substituteInPlace $out/lib/systemd/system/farmd.service $out/lib/systemd/system/farmd-nightly.service \
      --replace-quiet /usr/local/bin/ $out/bin/ \
      --replace-quiet /bin/kill ${coreutils}/bin/kill
    install -Dm0644 config/farmd.example.toml $out/share/doc/nixfarm/farmd.example.toml
  '';

  meta = {
    description = "A build farm for NixOS fleets: builds every machine, signs and publishes to a static binary cache";
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = "farmd";
    platforms = lib.platforms.linux;
  };
}
