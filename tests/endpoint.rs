//! Each build's own engine endpoint, as steps use it: the real Docker CLI inside steps
//! (`gcr.io/cloud-builders/docker`), through `builder submit` and `builder serve`, against the
//! real engine and registry (`scripts/dev-env.sh`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::{Server, TOKEN};
use common::{Repository, build_id, leftovers, source, submit, submit_command};
use tempfile::TempDir;

mod common;

/// A config of one docker step running `script` in bash.
fn docker_steps(scripts: &[&str]) -> String {
    let mut config = String::from("steps:\n");
    for script in scripts {
        config +=
            "- name: gcr.io/cloud-builders/docker\n  entrypoint: bash\n  args:\n  - -c\n  - |\n";
        for line in script.lines() {
            config += &format!("    {line}\n");
        }
    }
    config
}

/// Submits `config` (with `extra` arguments); returns the build's stdout and id, having checked
/// that nothing of the build is left on the engine.
fn run(config: &str, extra: &[&str]) -> (String, String) {
    let data = TempDir::new().unwrap();
    let src = source(config, &[("hello.txt", "hello from the workspace\n")]);
    let out = submit(data.path(), src.path(), extra);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let id = build_id(&stdout);
    assert_eq!(leftovers(&id), "", "build {id} left things behind");
    (stdout, id)
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

#[test]
fn what_reaches_the_machine_is_refused_with_the_setting_that_allows_it() {
    // Each attempt prints its error; the build goes on.
    let attempts = [
        ("--privileged", "privileged containers"),
        ("-v /:/host", "the host path \"/\""),
        (
            "--mount type=bind,src=/etc,dst=/e",
            "the host path \"/etc\"",
        ),
        ("--network host", "the host's network"),
        ("--pid host", "the host's PID namespace"),
        ("--ipc host", "the host's IPC namespace"),
        ("--uts host", "the host's UTS namespace"),
        ("--device /dev/null", "devices"),
        ("--cap-add SYS_ADMIN", "added capabilities"),
        (
            "--security-opt seccomp=unconfined",
            "the security option \"seccomp=unconfined\"",
        ),
        (
            "--security-opt apparmor=unconfined",
            "the security option \"apparmor=unconfined\"",
        ),
    ];
    let script: String = attempts
        .iter()
        .map(|(flags, _)| {
            format!("docker run --rm {flags} builder/busybox true 2>&1 && echo 'ALLOWED {flags}'\n")
        })
        .collect::<String>()
        + "docker volume create --opt type=none --opt o=bind --opt device=/ root 2>&1 || true\n\
           docker run --rm -v /workspace/sub:/x builder/busybox true 2>&1 || true\n\
           printf 'FROM builder/busybox\\n' > Dockerfile\n\
           docker build --network host . 2>&1 && echo 'ALLOWED docker build --network host' || true\n\
           curl -s --unix-socket /var/run/docker.sock -H 'Content-Type: application/x-www-form-urlencoded' \
             --data networkmode=host 'http://docker/v1.41/build?version=2'; echo\n";
    let (stdout, _) = run(&docker_steps(&[&script]), &[]);
    assert!(stdout.contains("STATUS: SUCCESS"), "{stdout}");
    assert!(!stdout.contains("ALLOWED"), "{stdout}");
    for (flags, words) in attempts {
        let line = stdout
            .lines()
            .find(|l| l.contains("Error response from daemon") && l.contains(words))
            .unwrap_or_else(|| panic!("no refusal of {flags} ({words}) in:\n{stdout}"));
        assert!(
            line.contains(
                "a trusted build may (`trusted: true` in its trigger, `builder submit --trusted`"
            ),
            "{line}"
        );
    }
    assert!(
        stdout.contains("the host's network (docker build --network host, networkmode)"),
        "{stdout}"
    );
    // The engine would read a form body's fields over the query's.
    assert!(
        stdout.contains("builder: a build's body is its context, not a form"),
        "{stdout}"
    );
    assert!(
        stdout.contains("volume drivers and driver options"),
        "{stdout}"
    );
    assert!(
        stdout.contains("cannot mount part of a volume; bind /workspace itself"),
        "{stdout}"
    );
}

#[test]
fn submit_trusted_may_make_privileged_containers_and_bind_host_paths() {
    // Created, not started: this engine runs in a user namespace, where runc cannot start
    // privileged containers; what the endpoint judges is the creation.
    let script = "docker create --name privileged-$BUILD_ID --privileged \
                  -v /etc/hostname:/h:ro builder/busybox true >/dev/null\n\
                  docker inspect -f 'privileged={{.HostConfig.Privileged}} {{json .HostConfig.Binds}}' \
                  privileged-$BUILD_ID";
    let (stdout, _) = run(&docker_steps(&[script]), &["--trusted"]);
    assert!(
        stdout.contains(r#"Step #0: privileged=true ["/etc/hostname:/h:ro"]"#),
        "{stdout}"
    );
}

/// Build A keeps a detached container running while build B looks for it: B sees only its own,
/// and A's container goes with A's teardown.
#[test]
fn builds_never_see_each_others_containers_and_detached_ones_are_swept() {
    let data = TempDir::new().unwrap();
    let other = format!("endpoint-other-{}", std::process::id());
    // The detached container ends once /tmp/done exists in it; A waits for it.
    let a_script = format!(
        "docker run -d --name {other} --network cloudbuild builder/busybox \
         sh -c 'until [ -e /tmp/done ]; do sleep 0.1; done; sleep 600'\n\
         docker exec {other} sh -c 'until [ -e /tmp/done ]; do sleep 0.1; done'\n\
         echo a-done"
    );
    let a_source = source(&docker_steps(&[&a_script]), &[]);
    let a = submit_command(data.path(), a_source.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // On the engine, the name A gave is A's own (`builder-A.NAME`): B names it by its id.
    let start = Instant::now();
    let container = loop {
        let found = docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("name=\\.{other}$"),
        ]);
        let found = String::from_utf8_lossy(&found.stdout).trim().to_string();
        if !found.is_empty() {
            break found;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "A never ran {other}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Each command's output on lines of its own, `NAME: …`.
    let b_script = [
        ("inspect", format!("docker inspect {container}")),
        ("named", format!("docker inspect {other}")),
        ("logs", format!("docker logs {container}")),
        ("exec", format!("docker exec {container} true")),
        ("rm", format!("docker rm -f {container}")),
        (
            "connect",
            format!("docker network connect cloudbuild {container}"),
        ),
        (
            "from",
            format!("docker run --rm --volumes-from {container} builder/busybox true"),
        ),
    ]
    .iter()
    .map(|(name, command)| format!("{command} 2>&1 | sed 's/^/{name}: /'\n"))
    .collect::<String>()
        + "docker ps -a --format 'listed {{.Names}}'\n\
           docker network ls --format 'network {{.Name}}'";
    let (b_out, b_id) = run(&docker_steps(&[&b_script]), &[]);
    let listed: Vec<&str> = b_out.lines().filter(|l| l.contains("listed ")).collect();
    assert_eq!(listed.len(), 1, "{b_out}");
    assert!(
        listed[0].ends_with(&format!("builder-{b_id}-step-0")),
        "{b_out}"
    );
    let networks: Vec<&str> = b_out.lines().filter(|l| l.contains("network ")).collect();
    assert_eq!(networks.len(), 1, "{b_out}");
    assert!(
        networks[0].ends_with(&format!("builder-{b_id}-network")),
        "{b_out}"
    );
    assert!(
        b_out.contains(&format!("inspect: Error: No such object: {container}")),
        "{b_out}"
    );
    assert!(
        b_out.contains(&format!("named: Error: No such object: {other}")),
        "{b_out}"
    );
    for name in ["logs", "exec", "connect", "from"] {
        let answered = b_out.lines().any(|l| {
            l.contains(&format!("{name}: "))
                && l.contains(&format!("No such container: {container}"))
        });
        assert!(answered, "{name} was not answered 404:\n{b_out}");
    }
    assert!(
        docker(&["exec", &container, "touch", "/tmp/done"])
            .status
            .success()
    );
    let a_out = a.wait_with_output().unwrap();
    let a_out = String::from_utf8_lossy(&a_out.stdout);
    assert!(a_out.contains("Step #0: a-done"), "{a_out}");
    let a_id = build_id(&a_out);
    assert_eq!(leftovers(&a_id), "");
    assert!(
        !docker(&["inspect", &container]).status.success(),
        "{other} was left running"
    );
}

/// A build started by `submit`: its id as soon as it starts, and its whole stdout at its end.
struct Started {
    process: std::process::Child,
    id: String,
    output: std::thread::JoinHandle<String>,
}

fn start(data: &Path, source: &Path) -> Started {
    use std::io::BufRead;
    let mut process = submit_command(data, source)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = process.stdout.take().unwrap();
    let (id_sender, id) = std::sync::mpsc::channel();
    let output = std::thread::spawn(move || {
        let mut output = String::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(id) = line.strip_prefix("starting build \"") {
                let _ = id_sender.send(id.trim_end_matches('"').to_string());
            }
            output += &line;
            output.push('\n');
        }
        output
    });
    let id = id.recv_timeout(Duration::from_secs(120)).unwrap();
    Started {
        process,
        id,
        output,
    }
}

impl Started {
    fn finish(mut self) -> String {
        self.process.wait().unwrap();
        self.output.join().unwrap()
    }
}

/// Names are a build's own, as on Cloud Build, where each build has a VM: two builds at once
/// each start a `db` on `cloudbuild`, and each reaches its own by that name.
#[test]
fn two_builds_at_once_each_run_their_own_db() {
    let config = docker_steps(&[
        "docker run -d --name db --network cloudbuild builder/busybox \
         sh -c 'mkdir /www && echo served by the db of $BUILD_ID > /www/index.html && exec httpd -f -p 80 -h /www'",
        // Waits until both builds' db run (the test then makes go-BUILD_ID, of this build).
        "until docker inspect go-$BUILD_ID >/dev/null 2>&1; do sleep 0.2; done\n\
         curl -s --retry 20 --retry-connrefused --retry-delay 1 http://db/\n\
         docker inspect -f 'inspected {{.Name}}' db\n\
         docker ps --filter name=^db$$ --format 'listed {{.Names}}'",
    ]);
    let data = TempDir::new().unwrap();
    let src = source(&config, &[]);
    let builds = [
        start(data.path(), src.path()),
        start(data.path(), src.path()),
    ];
    for build in &builds {
        let label = format!("label=builder.build={}", build.id);
        let start = Instant::now();
        while docker(&["ps", "-q", "--filter", &label, "--filter", "name=\\.db$"])
            .stdout
            .is_empty()
        {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "build {} never ran its db",
                build.id
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for build in &builds {
        let made = docker(&[
            "create",
            "--label",
            &format!("builder.build={}", build.id),
            "--name",
            &format!("go-{}", build.id),
            "builder/busybox",
            "true",
        ]);
        assert!(made.status.success(), "{made:?}");
    }
    let ids: Vec<String> = builds.iter().map(|b| b.id.clone()).collect();
    for (build, other) in builds.into_iter().zip(ids.iter().rev()) {
        let id = build.id.clone();
        let stdout = build.finish();
        assert!(stdout.contains("STATUS: SUCCESS"), "{stdout}");
        assert!(
            stdout.contains(&format!("Step #1: served by the db of {id}")),
            "{stdout}"
        );
        assert!(!stdout.contains(other.as_str()), "{stdout}");
        assert!(stdout.contains("Step #1: inspected /db"), "{stdout}");
        assert!(stdout.contains("Step #1: listed db"), "{stdout}");
        assert_eq!(leftovers(&id), "", "build {id} left things behind");
    }
}

/// A container is named by the name the build gave it in every request, and that name is free
/// again once it is removed; builder's own containers stay out of reach.
#[test]
fn a_named_container_is_driven_and_removed_by_its_name() {
    let (stdout, _) = run(
        &docker_steps(&[
            "docker run -d --name db builder/busybox sh -c 'echo db is up; exec sleep 600' >/dev/null\n\
             until docker logs db 2>&1 | grep -q 'db is up'; do sleep 0.2; done\n\
             docker logs db | sed 's/^/logs: /'\n\
             docker exec db echo exec in db\n\
             docker ps -a --filter name=^db$$ --format 'listed {{.Names}}'\n\
             docker inspect -f 'inspected {{.Name}}' db\n\
             docker kill db >/dev/null\n\
             docker wait db | sed 's/^/waited: /'\n\
             docker rm -f db | sed 's/^/removed: /'\n\
             docker logs db 2>&1 | sed 's/^/gone: /'\n\
             docker run --rm --name db builder/busybox echo db again\n\
             docker inspect -f x builder-$BUILD_ID-seed 2>&1 | sed 's/^/seed: /'",
        ]),
        &[],
    );
    for line in [
        "logs: db is up",
        "exec in db",
        "listed db",
        "inspected /db",
        "waited: 137",
        "removed: db",
        "gone: Error: No such container: db",
        "db again",
    ] {
        assert!(
            stdout.contains(&format!("Step #0: {line}")),
            "no {line:?} in:\n{stdout}"
        );
    }
    // builder's own container of the build's volumes is not the steps' to touch.
    assert!(
        stdout.contains("Step #0: seed: Error: No such object: builder-"),
        "{stdout}"
    );
    let engine_names = stdout
        .lines()
        .filter(|l| l.contains("builder-") && !l.contains("seed: "));
    assert_eq!(engine_names.count(), 0, "{stdout}");
}

#[test]
fn a_container_on_cloudbuild_is_reachable_by_name_from_later_steps() {
    let (stdout, id) = run(
        &docker_steps(&[
            "docker run -d --name db --network cloudbuild builder/busybox \
             sh -c 'mkdir /www && echo served by db > /www/index.html && exec httpd -f -p 80 -h /www'",
            "curl -s --retry 20 --retry-connrefused --retry-delay 1 http://db/\n\
             docker run --rm --network cloudbuild builder/busybox wget -q -O- http://db/\n\
             printf 'FROM builder/busybox\\nRUN wget -q -O- http://db/\\n' > Dockerfile\n\
             docker build --no-cache --network cloudbuild . | grep 'served by'\n\
             docker network inspect cloudbuild --format 'inspected {{.Name}}'",
        ]),
        &[],
    );
    assert_eq!(
        stdout.matches("Step #1: served by db").count(),
        3,
        "the step, a container and a nested build reach db:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("Step #1: inspected builder-{id}-network")),
        "{stdout}"
    );
}

#[test]
fn binds_of_the_workspace_are_its_volume() {
    let (stdout, _) = run(
        &docker_steps(&[
            "docker run --rm -v /workspace:/src builder/busybox cat /src/hello.txt\n\
             docker run --rm --mount type=bind,src=/workspace,dst=/w builder/busybox \
             sh -c 'echo written > /w/out.txt'\n\
             cat /workspace/out.txt",
        ]),
        &[],
    );
    assert!(
        stdout.contains("Step #0: hello from the workspace"),
        "{stdout}"
    );
    assert!(stdout.contains("Step #0: written"), "{stdout}");
}

/// A trigger marked `trusted: true` may make privileged containers; another may not. (Created,
/// not started: this engine runs in a user namespace, where runc cannot start them.)
#[test]
fn a_trusted_trigger_may_run_privileged() {
    let repository = Repository::new();
    let config = docker_steps(&[
        "docker create --privileged builder/busybox true 2>&1 >/dev/null && echo privileged-made",
    ]);
    repository.commit(&[("cloudbuild.yaml", &config)], "c", "HEAD:main");
    let triggers = TempDir::new().unwrap();
    for (name, extra) in [("trusted", "trusted: true\n"), ("plain", "")] {
        let yaml = format!(
            "name: {name}\nfilename: cloudbuild.yaml\n\
             github: {{owner: acme, name: app, push: {{branch: ^main$}}}}\n{extra}"
        );
        std::fs::write(triggers.path().join(format!("{name}.yaml")), yaml).unwrap();
    }
    let data = TempDir::new().unwrap();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let mut runs = Vec::new();
    for name in ["trusted", "plain"] {
        let path = format!("/v1/triggers/{name}/run");
        let (code, answer) = server.post(&path, r#"{"branch": "main"}"#, TOKEN);
        assert_eq!(code, 200, "{answer}");
        runs.push(answer["build"].as_str().unwrap().to_string());
    }
    let trusted = server.finished(&runs[0]);
    assert_eq!(trusted["status"], "SUCCESS", "{trusted}");
    assert!(
        server
            .log(&runs[0])
            .contains(&"privileged-made".to_string())
    );
    let plain = server.finished(&runs[1]);
    assert_eq!(plain["status"], "FAILURE", "{plain}");
    let refusal = server.log(&runs[1]);
    assert!(
        refusal
            .iter()
            .any(|l| l.contains("may not use privileged containers")),
        "{refusal:?}"
    );
    server.kill();
}

#[test]
fn the_endpoint_directory_is_gone_after_the_build() {
    let (_, id) = run(
        &docker_steps(&["docker version --format '{{.Server.APIVersion}}'"]),
        &[],
    );
    let dir = std::env::temp_dir().join("builder-endpoints").join(&id);
    assert!(!Path::new(&dir).exists(), "{} is left", dir.display());
}

/// Untags `names` on the engine (the images stay under their other names).
fn untag(names: &[&str]) {
    for name in names {
        let _ = docker(&["rmi", name]);
    }
}

/// Real Dockerfiles name Docker Hub images; offline, they build from the aliases' images, also
/// across stages, with `ARG`s and `-f`.
#[test]
fn dockerfiles_from_docker_hub_images_build_offline() {
    let id = std::process::id();
    let (one, two) = (
        format!("endpoint-from-ubuntu:{id}"),
        format!("endpoint-multistage:{id}"),
    );
    untag(&["ubuntu:22.04", "python:3.11-slim"]);
    let config = docker_steps(&[&format!(
        "printf 'FROM ubuntu:22.04\\nRUN echo built on ubuntu > /built\\n' > Dockerfile\n\
         docker build -q -t {one} . >/dev/null\n\
         docker run --rm {one} cat /built\n\
         docker rmi ubuntu:22.04 >/dev/null\n\
         docker build -q -t {one} -f - . < Dockerfile >/dev/null\n\
         docker run --rm {one} cat /built\n\
         mkdir -p ci\n\
         printf 'ARG PY=3.11\\nFROM python:$${{PY}}-slim AS base\\nRUN python3 -c \"print(42)\" > /answer\\n\
         FROM base AS test\\nFROM builder/busybox\\nCOPY --from=base /answer /answer\\n' > ci/Dockerfile.multi\n\
         docker build -q -f ci/Dockerfile.multi -t {two} . >/dev/null\n\
         docker run --rm {two} cat /answer\n\
         printf 'FROM gcr.io/$PROJECT_ID/never-pushed-{id}\\n' > Dockerfile.missing\n\
         docker build -f Dockerfile.missing . 2>&1 || true"
    )]);
    let (stdout, _) = run(&config, &[]);
    untag(&[&one, &two]);
    // Twice: an image removed through the endpoint is resolved again, from a Dockerfile the CLI
    // puts last in the context (read from its standard input).
    assert_eq!(
        stdout.matches("Step #0: built on ubuntu").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("Step #0: 42"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "builder: the Dockerfile's image \"gcr.io/local/never-pushed-{id}\" is \
             \"localhost:5000/local/never-pushed-{id}:latest\" here (image aliases and mirrors), \
             which could not be pulled"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("STATUS: SUCCESS"), "{stdout}");
}

/// An image a build pushed to `gcr.io/$PROJECT_ID/…` (through the registry mirror) is pulled
/// back by name in a later build, from the mirror.
#[test]
fn images_pushed_to_gcr_are_pulled_back_through_the_mirror() {
    let name = format!("endpoint-pull-{}", std::process::id());
    let image = format!("gcr.io/local/{name}");
    let mirrored = format!(
        "{}/local/{name}",
        common::REGISTRY.replace("127.0.0.1", "localhost")
    );
    let push = docker_steps(&[&format!(
        "printf 'FROM builder/busybox\\nCMD [\"echo\", \"pulled {name}\"]\\n' > Dockerfile\n\
         docker build -q -t gcr.io/$PROJECT_ID/{name} . >/dev/null\n\
         docker push gcr.io/$PROJECT_ID/{name} | tail -1"
    )]);
    let (stdout, _) = run(&push, &[]);
    assert!(stdout.contains("STATUS: SUCCESS"), "{stdout}");
    assert!(
        common::registry_digest(&format!("local/{name}"), "latest").is_some(),
        "not pushed through the mirror:\n{stdout}"
    );
    untag(&[&image, &mirrored]);
    let pull = docker_steps(&[&format!(
        "docker pull -q gcr.io/$PROJECT_ID/{name}\n\
         docker run --rm gcr.io/$PROJECT_ID/{name}"
    )]);
    let (stdout, _) = run(&pull, &[]);
    untag(&[&image, &mirrored]);
    assert!(
        stdout.contains(&format!("Step #0: pulled {name}")),
        "{stdout}"
    );
}

/// BuildKit's session (`/session`, `/grpc`, upgraded) passes through; its Dockerfile is not
/// read, so its images are not resolved, but a `docker pull` of them first (which is) lets it
/// build offline.
#[test]
fn buildkit_builds_through_the_endpoint_from_pulled_images() {
    let id = std::process::id();
    let config = docker_steps(&[&format!(
        "printf 'FROM debian:bookworm-slim\\nRUN echo buildkit-ran\\n' > Dockerfile\n\
         docker pull -q debian:bookworm-slim\n\
         DOCKER_BUILDKIT=1 docker build --no-cache --progress=plain -t endpoint-buildkit:{id} . 2>&1 \
         | grep -E '^#[0-9]+ [0-9.]+ buildkit-ran$$' | grep -o 'buildkit-ran'"
    )]);
    let (stdout, _) = run(&config, &[]);
    untag(&[&format!("endpoint-buildkit:{id}")]);
    assert!(stdout.contains("Step #0: buildkit-ran"), "{stdout}");
}
