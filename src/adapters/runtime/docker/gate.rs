//! Starting a step's container ahead of its turn, held at a gate until the steps it waits for are
//! done, so that the engine's start (network attach, mounts, runc: ~300 ms) is behind it by then.
//!
//! The held container runs a static busybox shell, from a volume of the build, that blocks on a read of its
//! stdin; releasing it writes one line, after which the shell `exec`s the step's command, which
//! then is the container's PID 1 with the step's environment, user and working directory, as if
//! the engine had started it. A read holds the container without a polling loop and without a
//! race: a line written before the read is not lost, as a signal sent before a `trap` would be.
//! If the writer goes away unreleased, the read ends and the step's command never runs.

use std::io;
use std::sync::LazyLock;

use tokio::io::AsyncWriteExt;

use super::engine::{ImageInfo, Stdin};

/// Where the host's static busybox is (Debian's `busybox-static`, installed by
/// `scripts/dev-env.sh`). Without one, containers are created ahead but not started.
const HOST_SHELL: &str = "/bin/busybox";
/// Where the build's gate volume, holding the shell, is mounted (read-only in held containers).
pub const DIR: &str = "/builder/gate";
const SHELL: &str = "/builder/gate/busybox";

/// The gate, as `sh -c SCRIPT gate COMMAND...`. busybox runs its own applets for bare command
/// names (`exec ls` would run busybox's `ls`), so the command is looked up on `PATH` here, as the
/// engine does, and run under its own name. busybox exports `PWD` and `SHLVL`, which a container
/// the engine starts does not have.
const SCRIPT: &str = r#"read -r _ || exit 1
unset PWD SHLVL
cmd=$1
shift
case $cmd in */*) exec "$cmd" "$@" ;; esac
IFS=:
for dir in $PATH; do
  if [ -f "$dir/$cmd" ] && [ -x "$dir/$cmd" ]; then exec -a "$cmd" "$dir/$cmd" "$@"; fi
done
echo "exec: \"$cmd\": executable file not found in \$PATH" >&2
exit 127"#;

/// The host's static busybox, read once; `None` if there is none.
static HOST_BUSYBOX: LazyLock<Option<Vec<u8>>> = LazyLock::new(|| {
    std::fs::read(HOST_SHELL)
        .ok()
        .filter(|binary| is_static_elf(binary))
});

/// Whether containers can be held at the gate on this machine.
pub fn available() -> bool {
    HOST_BUSYBOX.is_some()
}

/// Adds the gate's shell to a tar for `/` of a container that mounts the gate volume at [`DIR`].
/// Call only if [`available`].
pub fn append_shell(archive: &mut tar::Builder<Vec<u8>>) -> io::Result<()> {
    let shell = HOST_BUSYBOX.as_deref().unwrap_or_default();
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o755);
    header.set_size(shell.len() as u64);
    archive.append_data(&mut header, SHELL.trim_start_matches('/'), shell)
}

/// The entrypoint that holds `command` at the gate.
pub fn held(command: Vec<String>) -> Vec<String> {
    let gate = [SHELL, "sh", "-c", SCRIPT, "gate"];
    gate.into_iter().map(String::from).chain(command).collect()
}

/// Lets a held container run its command.
pub async fn release(mut stdin: Stdin) -> io::Result<()> {
    stdin.write_all(b"\n").await?;
    stdin.shutdown().await
}

/// The command the engine runs for a container of `image` created with `entrypoint` and `args`:
/// the given entrypoint replaces the image's and drops its default command (as `docker run
/// --entrypoint` does); given args replace the default command.
pub fn command(entrypoint: Option<&[String]>, args: &[String], image: &ImageInfo) -> Vec<String> {
    let (entrypoint, default_args) = match entrypoint {
        Some(entrypoint) => (entrypoint, &[][..]),
        None => (&image.entrypoint[..], &image.cmd[..]),
    };
    let args = if args.is_empty() { default_args } else { args };
    entrypoint.iter().chain(args).cloned().collect()
}

/// Whether `binary` is a 64-bit little-endian ELF executable without an interpreter (no
/// `PT_INTERP` program header), so that it runs in any image, whatever libraries it has.
fn is_static_elf(binary: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read = |offset: usize, len: usize| -> Option<u64> {
        let bytes = binary.get(offset..offset.checked_add(len)?)?;
        Some(bytes.iter().rev().fold(0, |n, &b| n << 8 | u64::from(b)))
    };
    if !binary.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let header = || {
        let (table, size, count) = (read(0x20, 8)?, read(0x36, 2)?, read(0x38, 2)?);
        (0..count)
            .map(|i| read(usize::try_from(table + i * size).ok()?, 4))
            .collect::<Option<Vec<_>>>()
    };
    header().is_some_and(|types| !types.contains(&u64::from(PT_INTERP)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageInfo {
        ImageInfo {
            id: "sha256:0".into(),
            digest: None,
            entrypoint: strings(entrypoint),
            cmd: strings(cmd),
        }
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_command_combines_the_step_and_the_image_as_the_engine_does() {
        let defaults = image(&["/entry"], &["default"]);
        assert_eq!(
            command(None, &[], &defaults),
            strings(&["/entry", "default"])
        );
        assert_eq!(
            command(None, &strings(&["a"]), &defaults),
            strings(&["/entry", "a"])
        );
        let bash = strings(&["bash"]);
        assert_eq!(command(Some(&bash), &[], &defaults), strings(&["bash"]));
        assert_eq!(
            command(Some(&bash), &strings(&["-c", "x"]), &defaults),
            strings(&["bash", "-c", "x"])
        );
        assert!(command(None, &[], &image(&[], &[])).is_empty());
    }

    #[test]
    fn only_a_static_elf_passes() {
        assert!(!is_static_elf(b""));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        assert!(!is_static_elf(&std::fs::read("/bin/sh").unwrap()));
        // Installed by scripts/dev-env.sh.
        assert!(is_static_elf(&std::fs::read(HOST_SHELL).unwrap()));
    }
}
