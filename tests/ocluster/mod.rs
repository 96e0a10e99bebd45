//! Fixtures for the OCluster worker tests: the C++ scheduler stand-in (scheduler.c++,
//! compiled here with g++ against Debian's libcapnp-dev), stunnel in front of it with an
//! OpenSSL-made certificate shaped like OCluster's (RSA-2048, X.509 v3, no extensions), and
//! `strata worker` processes. Every process is stopped by its pid when dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The service id the scheduler exports (bytes with a NUL and 0xff, as pool ids may have).
pub const SERVICE_ID_HEX: &str = "610062ff";
pub const SERVICE_ID_B64: &str = "YQBi_w";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Compiles the stand-in once per test process into `dir`.
pub fn build_scheduler(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    run(Command::new("capnp")
        .arg("compile")
        .arg(format!("-oc++:{}", dir.display()))
        .arg(format!("--src-prefix={}", root.join("schema").display()))
        .arg(root.join("schema/ocluster.capnp")));
    let flags = run(Command::new("pkg-config").args(["--cflags", "--libs", "capnp-rpc"]));
    let exe = dir.join("scheduler");
    run(Command::new("g++")
        .args(["-std=c++14", "-O0", "-Wno-deprecated-declarations"])
        .arg(format!("-I{}", dir.display()))
        .arg(root.join("tests/ocluster/scheduler.c++"))
        .arg(dir.join("ocluster.capnp.c++"))
        .args(flags.split_whitespace())
        .arg("-o")
        .arg(&exe));
    exe
}

/// A child process killed (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let file = std::fs::File::create(log).expect("log file");
        let err = file.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            child,
            name: name.to_owned(),
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
    }

    /// SIGTERM and wait up to `timeout`; the exit status if it exited.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if self.terminate(Duration::from_secs(20)).is_none() {
                self.kill();
            }
        }
    }
}

/// The scheduler stand-in: jobs from `jobs`, results into `out`.
pub struct Scheduler {
    pub exe: PathBuf,
    pub jobs: PathBuf,
    pub out: PathBuf,
    pub port: u16,
    pub proc: Option<Proc>,
}

impl Scheduler {
    pub fn start(exe: &Path, dir: &Path, port: u16) -> Scheduler {
        let jobs = dir.join("jobs");
        let out = dir.join("out");
        std::fs::create_dir_all(&jobs).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let mut s = Scheduler {
            exe: exe.to_owned(),
            jobs,
            out,
            port,
            proc: None,
        };
        s.restart();
        s
    }

    /// (Re)starts on the same port (the first start picks one).
    pub fn restart(&mut self) {
        // The old one first: the new one binds the same port.
        if let Some(mut old) = self.proc.take() {
            old.kill();
        }
        let dir = self.out.parent().unwrap().to_owned();
        let port_file = dir.join("port");
        let _ = std::fs::remove_file(&port_file);
        let mut cmd = Command::new(&self.exe);
        cmd.arg(self.port.to_string())
            .arg(&self.jobs)
            .arg(&self.out)
            .arg(SERVICE_ID_HEX)
            .arg(&port_file);
        self.proc = Some(Proc::spawn("scheduler", &mut cmd, &dir.join("scheduler.log")));
        let text = wait_for(Duration::from_secs(20), || std::fs::read_to_string(&port_file).ok())
            .expect("the scheduler wrote its port");
        self.port = text.trim().parse().expect("a port");
    }

    pub fn add_job(&self, name: &str, header: &str, spec: &str) {
        std::fs::write(self.jobs.join(format!("{name}.job")), format!("{header}spec\n{spec}")).unwrap();
    }

    pub fn events(&self) -> String {
        std::fs::read_to_string(self.out.join("events")).unwrap_or_default()
    }

    pub fn result(&self, job: &str) -> Option<String> {
        std::fs::read_to_string(self.out.join(format!("{job}.result"))).ok()
    }

    pub fn log(&self, job: &str) -> String {
        String::from_utf8_lossy(&std::fs::read(self.out.join(format!("{job}.log"))).unwrap_or_default()).into_owned()
    }
}

/// stunnel in front of the scheduler, with an OpenSSL-made OCluster-shaped certificate.
pub struct Tls {
    pub port: u16,
    /// The fingerprint computed by OpenSSL (the oracle), unpadded base64url.
    pub fingerprint: String,
    pub proc: Proc,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Tls {
    pub fn start(dir: &Path, backend_port: u16) -> Tls {
        let cnf = dir.join("openssl.cnf");
        std::fs::write(
            &cnf,
            "[req]\ndistinguished_name = dn\nx509_extensions = noext\nprompt = no\n[dn]\nCN = capnp\n\
             [noext]\nsubjectKeyIdentifier = none\nauthorityKeyIdentifier = none\n",
        )
        .unwrap();
        let (key, cert) = (dir.join("server.key"), dir.join("server.pem"));
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-config"])
            .arg(&cnf)
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let text = run(Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&cert));
        assert!(text.contains("Version: 3 (0x2)") && !text.contains("X509v3"), "{text}");
        let fp = run(Command::new("sh").arg("-c").arg(format!(
            "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256 -binary | basenc --base64url | tr -d '=\\n'",
            cert.display()
        )));
        assert_eq!(fp.len(), 43, "{fp}");
        let port = free_port();
        let conf = dir.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\n[sched]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{backend_port}\n\
                 cert = {}\nkey = {}\nrequireCert = yes\nverifyChain = no\nverifyPeer = no\n",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let proc = Proc::spawn("stunnel", Command::new("stunnel").arg(&conf), &dir.join("stunnel.log"));
        wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .expect("stunnel listens");
        Tls {
            port,
            fingerprint: fp,
            proc,
        }
    }

    pub fn cap_file(&self, dir: &Path, fingerprint: &str) -> PathBuf {
        let path = dir.join(format!("pool-{}.cap", &fingerprint[..6]));
        std::fs::write(
            &path,
            format!(
                "capnp://sha-256:{fingerprint}@127.0.0.1:{}/{SERVICE_ID_B64}\n",
                self.port
            ),
        )
        .unwrap();
        path
    }
}

pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
