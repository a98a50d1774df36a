//! A TLS cluster of distkit-node processes: certificates from `distkit-node certs`, the
//! public API and the peer routes over https, failover, and a plaintext node left out.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::node::{NODE, TOKEN, get_text, node_command, send_json, status, wait_status};

struct Nodes(Vec<Option<Child>>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in self.0.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Node `i` of a cluster on `ports`, over TLS with its certificate from `certs`, or in
/// plaintext (and then with plaintext peer URLs: what a misconfigured node would have).
fn spawn(ports: &[u16], i: usize, certs: &Path, data: &Path, tls: bool) -> Child {
    let scheme = if tls { "https" } else { "http" };
    let peers: Vec<String> = (0..ports.len())
        .filter(|&j| j != i)
        .map(|j| format!("node-{j}={scheme}://127.0.0.1:{}", ports[j]))
        .collect();
    let mut c = node_command();
    c.args(["--id", &format!("node-{i}")])
        .args(["--listen", &format!("127.0.0.1:{}", ports[i])])
        .args(["--token", TOKEN, "--peer", &peers.join(",")])
        .arg("--data-dir")
        .arg(data.join(format!("node-{i}")));
    if tls {
        c.arg("--tls-cert")
            .arg(certs.join(format!("node-{i}.pem")))
            .arg("--tls-key")
            .arg(certs.join(format!("node-{i}-key.pem")))
            .arg("--tls-ca")
            .arg(certs.join("ca.pem"));
    }
    c.spawn().expect("the node binary starts")
}

async fn leader(http: &reqwest::Client, urls: &[String], skip: Option<usize>) -> Option<usize> {
    for (i, u) in urls.iter().enumerate() {
        if Some(i) != skip
            && let Some(s) = status(http, u).await
            && s["role"] == "leader"
        {
            return Some(i);
        }
    }
    None
}

async fn wait_leader(http: &reqwest::Client, urls: &[String], skip: Option<usize>) -> usize {
    let start = Instant::now();
    loop {
        if let Some(i) = leader(http, urls, skip).await {
            return i;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_forms_serves_fails_over_and_a_plaintext_node_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let made = std::process::Command::new(NODE)
        .args(["certs", "--dir"])
        .arg(&certs)
        .args(["node-0", "node-1", "node-2"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    // A second run into the same directory refuses to replace the CA.
    let again = std::process::Command::new(NODE)
        .args(["certs", "--dir"])
        .arg(&certs)
        .arg("node-3")
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));

    let ports: Vec<u16> = (0..3)
        .map(|_| distkit_testkit::free_port().unwrap())
        .collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("https://127.0.0.1:{p}"))
        .collect();
    let mut nodes = Nodes(
        (0..3)
            .map(|i| Some(spawn(&ports, i, &certs, dir.path(), true)))
            .collect(),
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let first = wait_leader(&http, &urls, None).await;
    let s = wait_status(&http, &urls[first], "every member healthy over TLS", |s| {
        s["members"]
            .as_array()
            .is_some_and(|m| m.iter().all(|m| m["state"] == "ok"))
    })
    .await;
    assert!(
        s["members"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );

    // The public API over https: the cache across nodes (peer calls over TLS too), a lock.
    for i in 0..20 {
        let r = http
            .put(format!("{}/v1/cache/device:{i}", urls[0]))
            .body(format!("v{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
    }
    for i in 0..20 {
        let v = http
            .get(format!("{}/v1/cache/device:{i}", urls[1]))
            .send()
            .await
            .unwrap();
        assert_eq!(v.bytes().await.unwrap(), format!("v{i}").as_bytes());
    }
    let grant = send_json(
        http.post(format!("{}/v1/locks/a", urls[2]))
            .body("{\"ttl_ms\": 5000}"),
    )
    .await;
    assert!(grant["token"].is_string(), "{grant}");

    // Plaintext to a TLS listener gets nothing; neither does https without the cluster's CA.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let http_url = format!("http://127.0.0.1:{}/healthz", ports[0]);
    assert!(plain.get(&http_url).send().await.is_err());
    assert!(
        plain
            .get(format!("{}/healthz", urls[0]))
            .send()
            .await
            .is_err()
    );

    // Failover: kill the leader; the other two elect one over TLS.
    if let Some(mut c) = nodes.0[first].take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let second = wait_leader(&http, &urls, Some(first)).await;
    assert_ne!(second, first);

    // The killed node comes back in plaintext: it cannot join. The TLS members report its
    // failed handshakes (`tls_refused`), it learns of no leader, and the leader stays.
    nodes.0[first] = Some(spawn(&ports, first, &certs, dir.path(), false));
    let plain_url = format!("http://127.0.0.1:{}", ports[first]);
    wait_status(&plain, &plain_url, "the plaintext node starts", |_| true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = wait_status(
        &http,
        &urls[second],
        "the plaintext node's handshakes are refused",
        |s| {
            s["members"].as_array().is_some_and(|m| {
                m.iter()
                    .any(|m| m["id"] == format!("node-{first}") && m["state"] == "tls_refused")
            })
        },
    )
    .await;
    assert_eq!(s["role"], "leader", "{s}");
    let ready = plain
        .get(format!("{plain_url}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status().as_u16(),
        503,
        "the plaintext node found no leader"
    );
    let alone = status(&plain, &plain_url).await.unwrap();
    assert!(
        alone["members"]
            .as_array()
            .unwrap()
            .iter()
            .skip(1)
            .all(|m| m["state"] != "ok"),
        "{alone}"
    );

    // Back with TLS but a certificate from another CA: the members say so.
    if let Some(mut c) = nodes.0[first].take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let other = dir.path().join("other-ca");
    let made = std::process::Command::new(NODE)
        .args(["certs", "--dir"])
        .arg(&other)
        .arg(format!("node-{first}"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let own = dir.path().join("own");
    std::fs::create_dir_all(&own).unwrap();
    for f in [format!("node-{first}.pem"), format!("node-{first}-key.pem")] {
        std::fs::copy(certs.join(&f), own.join(&f)).unwrap();
        std::fs::copy(other.join(&f), certs.join(&f)).unwrap();
    }
    nodes.0[first] = Some(spawn(&ports, first, &certs, dir.path(), true));
    wait_status(
        &http,
        &urls[second],
        "the foreign certificate is reported",
        |s| {
            s["members"].as_array().is_some_and(|m| {
                m.iter()
                    .any(|m| m["id"] == format!("node-{first}") && m["state"] == "tls_refused")
            })
        },
    )
    .await;
    let metrics = get_text(&http, format!("{}/metrics", urls[second])).await;
    assert!(
        metrics.contains(&format!(
            "distkit_node_peer_tls_failures_total{{peer=\"node-{first}\"}}"
        )),
        "{metrics}"
    );

    // Back with TLS and its own certificate, it rejoins.
    if let Some(mut c) = nodes.0[first].take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    for f in [format!("node-{first}.pem"), format!("node-{first}-key.pem")] {
        std::fs::copy(own.join(&f), certs.join(&f)).unwrap();
    }
    nodes.0[first] = Some(spawn(&ports, first, &certs, dir.path(), true));
    wait_status(&http, &urls[first], "the node rejoins over TLS", |s| {
        s["leader"].is_string()
            && s["members"]
                .as_array()
                .is_some_and(|m| m.iter().all(|m| m["state"] == "ok"))
    })
    .await;
}
