//! The binary as users run it: flags, environment, config file, exit codes, logs, signals.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerjsd");

/// A running `peerjsd` and the lines it logged.
struct Running {
    child: Child,
    addr: String,
    lines: std::sync::mpsc::Receiver<String>,
}

fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn peerjsd");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("a first log line");
    let log: Value = serde_json::from_str(&first).unwrap_or_else(|_| panic!("not JSON: {first}"));
    assert_eq!(log["message"], "listening", "{first}");
    let addr = log["addr"].as_str().expect("addr").to_owned();
    Running { child, addr, lines }
}

impl Running {
    fn terminate(&mut self) -> (Option<i32>, Duration) {
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status.code(), started.elapsed());
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The lines logged after `listening`, read to the end of stdout (call it after exit: the
    /// last lines are written as the process exits).
    fn logged(&self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut logged = Vec::new();
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(wait) {
                Ok(l) => logged
                    .push(serde_json::from_str(&l).unwrap_or_else(|_| panic!("not JSON: {l}"))),
                Err(RecvTimeoutError::Disconnected) => return logged,
                Err(RecvTimeoutError::Timeout) => panic!("stdout still open: {logged:?}"),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn help_lists_every_flag_with_its_default() {
    let output = Command::new(BIN).arg("--help").output().expect("run");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--port",
        "--host",
        "--path",
        "--key",
        "--expire-timeout",
        "--alive-timeout",
        "--concurrent-limit",
        "--allow-discovery",
        "--proxied",
        "--cors",
        "--sslkey",
        "--sslcert",
        "--config",
        "--rooms",
        "--max-room-peers",
        "--announce-leave",
        "--rate-limit",
        "--max-message-size",
        "--max-connections-per-ip",
        "--handshake-timeout",
        "--shutdown-timeout",
        "--log-format",
        "--auth-secret",
        "--auth-secret-previous",
        "--auth-secret-file",
        "--auth-issuer",
        "--auth-audience",
        "--issued-ids-only",
        "--id-secret",
        "--id-secret-file",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    for default in [
        "[default: 9000]",
        "[default: /]",
        "[default: peerjs]",
        "[default: 60000]",
        "[default: 5000]",
        "[default: 100000]",
    ] {
        assert!(help.contains(default), "--help lacks {default}");
    }
}

#[test]
fn a_bad_value_exits_2_with_one_line_naming_flag_and_value() {
    for (args, flag, value) in [
        (vec!["--port", "http"], "--port", "http"),
        (vec!["--alive_timeout", "soon"], "--alive-timeout", "soon"),
        (vec!["--rooms", "lobby"], "--rooms", "lobby"),
        (vec!["--concurrent-limit", "0"], "--concurrent-limit", "0"),
        (
            vec![
                "--turn-secret",
                "a TURN secret of 32 bytes or more",
                "--turn-uri",
                "turn://relay:3478",
            ],
            "--turn-uri",
            "turn://relay:3478",
        ),
    ] {
        let output = Command::new(BIN).args(&args).output().expect("run");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(flag) && stderr.contains(value), "{stderr}");
    }
}

#[tokio::test]
async fn reference_flags_work_and_sigterm_exits_promptly_with_open_sockets() {
    let mut server = start(
        &[
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--path",
            "/myapp",
            "--key",
            "k",
            "--expire_timeout",
            "5000",
            "--alive_timeout",
            "60000",
            "--concurrent_limit",
            "5000",
            "--allow_discovery",
        ],
        &[],
    );
    let url = format!("ws://{}/myapp/peerjs?key=k&id=alice&token=t", server.addr);
    let mut alice = common::PeerClient::connect_url(&url, "alice").await;
    alice.expect("OPEN").await;
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let peers = common::http_raw(
        addr,
        "GET /myapp/k/peers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(peers.body, r#"["alice"]"#);

    let (code, took) = server.terminate();
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(alice.closed().await.0, 1001);
    let logged = server.logged();
    let messages: Vec<&str> = logged
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    for event in [
        "peer open",
        "shutting down",
        "peer closed",
        "shutdown complete",
    ] {
        assert!(messages.contains(&event), "no '{event}' in {messages:?}");
    }
    let open = logged.iter().find(|l| l["message"] == "peer open").unwrap();
    assert_eq!(open["peer"], "alice");
    assert!(
        logged
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
}

#[tokio::test]
async fn reference_environment_and_config_file_work() {
    let dir = std::env::temp_dir().join(format!("peerjsd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("peerjsd.toml");
    std::fs::write(
        &file,
        "key = \"fromfile\"\nhost = \"127.0.0.1\"\nallow-discovery = true\n",
    )
    .unwrap();
    let server = start(
        &["--config", file.to_str().unwrap()],
        &[("PORT", "0"), ("PEERSERVER_PATH", "/envpath")],
    );
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let peers = common::http_raw(
        addr,
        "GET /envpath/fromfile/peers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((peers.status, peers.body.as_str()), (200, "[]"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_shipped_config_file_documents_every_flag_and_changes_nothing() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/peerjsd.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let help = String::from_utf8(Command::new(BIN).arg("--help").output().unwrap().stdout).unwrap();
    // Every long flag but --config/--help/--version appears as a key (set or commented out).
    for flag in help.split_whitespace().filter(|w| w.starts_with("--")) {
        let key = flag
            .trim_start_matches("--")
            .trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
        if ["config", "help", "version"].contains(&key) || key.contains('_') {
            continue;
        }
        let documented = text.lines().any(|l| {
            let l = l.trim_start_matches(['#', ' ']);
            l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))
        });
        assert!(documented, "config/peerjsd.toml does not document --{key}");
    }
    // Loading it gives exactly the built-in defaults.
    let parsed = match peerjsd::Config::from_args(["peerjsd", "--config", path]) {
        Ok(peerjsd::config::Parsed::Run(c)) => *c,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", peerjsd::Config::default())
    );
}

#[test]
fn systemd_notify_ready_then_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = std::env::temp_dir().join(format!("peerjsd-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut server = start(
        &["--port", "0", "--host", "127.0.0.1"],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("READY notification");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.contains(&format!("STATUS=listening on {}", server.addr)),
        "{ready}"
    );
    let (code, _) = server.terminate();
    let n = socket.recv(&mut buf).expect("STOPPING notification");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert_eq!(code, Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}
