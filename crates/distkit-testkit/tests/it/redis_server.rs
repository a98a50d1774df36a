use std::time::Duration;

use distkit_testkit::{RedisServer, Reply, find_redis_server};

#[test]
fn starts_answers_and_is_private() {
    let a = RedisServer::start().expect("redis-server starts");
    let b = RedisServer::start().expect("a second redis-server starts");
    assert_ne!(a.port(), b.port());
    a.ping().expect("a answers PING");
    b.ping().expect("b answers PING");
    assert_eq!(
        a.command(&["SET", "k", "only-in-a"]).unwrap(),
        Reply::Status("OK".into())
    );
    assert_eq!(b.command(&["GET", "k"]).unwrap(), Reply::Nil);
    assert_eq!(
        a.command(&["GET", "k"]).unwrap().as_text().as_deref(),
        Some("only-in-a")
    );
    // Persistence is off.
    assert_eq!(
        a.command(&["CONFIG", "GET", "save"]).unwrap(),
        Reply::Array(vec![Reply::Bulk(b"save".to_vec()), Reply::Bulk(Vec::new())])
    );
}

#[test]
fn kill_and_restart_keep_the_port_and_lose_the_data() {
    let mut r = RedisServer::start().unwrap();
    let port = r.port();
    r.command(&["SET", "k", "v"]).unwrap();
    r.kill().unwrap();
    assert!(!r.is_running());
    assert!(r.ping().is_err(), "a killed server must not answer");
    r.restart().unwrap();
    assert_eq!(r.port(), port);
    assert!(r.is_running());
    assert_eq!(r.command(&["GET", "k"]).unwrap(), Reply::Nil);
}

#[test]
fn stop_is_a_clean_shutdown() {
    let mut r = RedisServer::start().unwrap();
    r.stop().unwrap();
    assert!(r.ping().is_err());
    assert!(
        r.log().contains("ready to exit") || r.log().contains("shutdown"),
        "log: {}",
        r.log()
    );
}

#[test]
fn pause_freezes_and_resume_thaws() {
    let mut r = RedisServer::start().unwrap();
    r.pause().unwrap();
    let started = std::time::Instant::now();
    assert!(r.ping().is_err(), "a paused server must not answer");
    // The client's read timeout, not a hang, ended the attempt (a generous liveness bound).
    assert!(started.elapsed() < Duration::from_secs(10));
    r.resume().unwrap();
    r.ping().unwrap();
}

#[test]
fn password_is_required_when_set() {
    let r = RedisServer::builder()
        .password("s3cret")
        .start()
        .expect("starts with a password");
    assert!(r.url().contains(":s3cret@"));
    r.ping().expect("the testkit authenticates itself");
    // A client without the password is refused.
    let mut s = std::net::TcpStream::connect(r.addr()).unwrap();
    std::io::Write::write_all(&mut s, b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut s, &mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("-NOAUTH"),
        "got {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[test]
fn start_many_gives_independent_servers() {
    let servers = RedisServer::start_many(3).unwrap();
    let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3);
}

#[test]
fn finds_the_binary() {
    assert!(find_redis_server().is_some());
}
