//! Three ws-server nodes as one service on a real NATS server (Debian's nats-server, JetStream on),
//! each node in its own namespace, the broker in another, every client in one client namespace
//! (`netns-scripts/cluster.sh`). Node 1 runs on the xdp stack, nodes 2 and 3 on the kernel's.
//! 2,000 connections per node; broadcast from any node, push to a device on another node, a
//! device that moves, `since` after moving, a node killed, the broker stopped and restarted.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{finish_load, load_bin, privileged, scratch, server_bin, talk_to};
use testkit::cluster::{ClusterNetns, BROKER_ADDR};
use testkit::http::http_in_netns;
use testkit::{wait_for, ChildGuard};

const NODES: usize = 3;
const CONNS: u64 = 2000;
const ADMIN: &str = "127.0.0.1:9001";
const PORT: u16 = 8080;

fn admin_addr() -> SocketAddr {
    ADMIN.parse().unwrap()
}

struct Node {
    k: usize,
    ns: String,
    server: ChildGuard,
}

impl Node {
    fn start(cl: &ClusterNetns, k: usize, dir: &Path) -> Node {
        let ns = cl.node_ns(k);
        let log_path = dir.join(format!("node{k}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = cl.command(&ns, &server_bin());
        cmd.args(["--listen", &format!("{}:{PORT}", cl.node_addr(k)), "--admin", ADMIN])
            .args(["--push-interval", "0", "--insecure-ids"])
            .args([
                "--cluster",
                &format!("nats://{BROKER_ADDR}:4222"),
                "--node-id",
                &format!("n{k}"),
            ]);
        if k == 1 {
            cmd.args(["--stack", "xdp", "--iface", &cl.node_dev(k), "--max-conns", "4000"]);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        let server = ChildGuard::spawn(&format!("node {k}"), cmd)
            .unwrap()
            .with_log(&log_path);
        let node = Node { k, ns, server };
        let up = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
            http_in_netns(&node.ns, "GET", admin_addr(), "/conns", b"").ok()
        });
        assert!(up.is_some(), "node {k} did not come up");
        node
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let (status, body) = http_in_netns(&self.ns, "GET", admin_addr(), path, b"").unwrap();
        assert_eq!(status, 200, "node {}: {path}: {body}", self.k);
        serde_json::from_str(&body).unwrap()
    }

    /// POST: (status, JSON body).
    fn post(&self, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let (status, text) = http_in_netns(&self.ns, "POST", admin_addr(), path, body).unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("node {}: {path}: {e}: {text}", self.k));
        (status, value)
    }

    fn cluster(&self) -> serde_json::Value {
        self.get("/stats")["cluster"].clone()
    }

    fn wait(&self, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
        let got = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
            ok(&self.cluster()).then_some(())
        });
        assert!(got.is_some(), "node {}: never {what}: {}", self.k, self.cluster());
    }

    fn conns(&self) -> u64 {
        self.get("/conns")["conns"].as_u64().unwrap()
    }
}

/// 2,000 devices (`n<k>-<i>`) on node `k` that stay until they have `broadcasts` broadcasts.
fn load(cl: &ClusterNetns, k: usize, broadcasts: u32, json: &Path) -> ChildGuard {
    let mut cmd = cl.command(&cl.cli, &load_bin());
    cmd.args(["--server", &format!("{}:{PORT}", cl.node_addr(k))])
        .args(["--conns", &CONNS.to_string(), "--rate", "0", "--hold", "300s"])
        .args(["--ids", "--id-prefix", &format!("n{k}-")])
        .args([
            "--expect-broadcasts",
            &broadcasts.to_string(),
            "--progress",
            "off",
            "--json",
        ])
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    ChildGuard::spawn(&format!("ws-load to node {k}"), cmd).unwrap()
}

/// A Python `websockets` device connected to `url` from the client host.
fn device(cl: &ClusterNetns, url: &str) -> (ChildGuard, impl FnMut() -> String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/ws_device.py");
    let mut cmd = cl.command(&cl.cli, Path::new("python3"));
    cmd.arg(script).arg(url).arg("120");
    talk_to("python device", cmd)
}

fn message(line: String) -> serde_json::Value {
    let json = line
        .strip_prefix("message ")
        .unwrap_or_else(|| panic!("a message, not {line:?}"));
    serde_json::from_str(json).unwrap()
}

fn nats_server(cl: &ClusterNetns, store: &Path, log: &Path) -> ChildGuard {
    let log = std::fs::File::create(log).unwrap();
    let mut cmd = cl.command(&cl.bus, Path::new("nats-server"));
    cmd.args(["-a", BROKER_ADDR, "-p", "4222", "-js", "-sd"])
        .arg(store)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let nats = ChildGuard::spawn("nats-server", cmd).unwrap();
    let up = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        testkit::in_ns(&cl.bus, || {
            std::net::TcpStream::connect_timeout(
                &format!("{BROKER_ADDR}:4222").parse().unwrap(),
                Duration::from_secs(1),
            )
            .ok()
        })
    });
    assert!(up.is_some(), "nats-server did not come up");
    nats
}

fn install_nats() {
    let root = testkit::repo_root().unwrap();
    let status = std::process::Command::new("bash")
        .arg(root.join("testbed/install-deps.sh"))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "install-deps.sh failed (nats-server is installed by it)"
    );
}

#[test]
fn three_nodes_on_nats_are_one_service_through_moves_deaths_and_broker_restarts() {
    if !privileged("three_nodes_on_nats_are_one_service_through_moves_deaths_and_broker_restarts") {
        return;
    }
    install_nats();
    let dir: PathBuf = scratch("cluster");
    let store = dir.join("jetstream");
    let cl = ClusterNetns::setup("wscl", NODES).unwrap();
    let mut nats = nats_server(&cl, &store, &dir.join("nats.log"));
    let mut nodes: Vec<Node> = (1..=NODES).map(|k| Node::start(&cl, k, &dir)).collect();
    for node in &nodes {
        node.wait("sees the two other nodes", |c| {
            c["peers"].as_array().map(Vec::len) == Some(2)
        });
        assert_eq!(node.cluster()["state"], "connected");
    }

    // 2,000 connections per node. Nodes 1 and 3 see four broadcasts; node 2 dies after two.
    let jsons: Vec<PathBuf> = (1..=NODES).map(|k| dir.join(format!("load{k}.json"))).collect();
    let mut loads: Vec<Option<ChildGuard>> = (1..=NODES)
        .map(|k| Some(load(&cl, k, if k == 2 { 2 } else { 4 }, &jsons[k - 1])))
        .collect();
    // A device on node 1 (its own connection, outside the 2,000).
    let (mut first, mut from_first) = device(&cl, &format!("ws://{}:{PORT}/ws?id=dev-a", cl.node_addr(1)));
    assert_eq!(from_first(), "connected");
    for node in &nodes {
        let want = CONNS + u64::from(node.k == 1);
        let got = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
            (node.conns() == want).then_some(())
        });
        assert!(got.is_some(), "node {} never held {want}: {}", node.k, node.conns());
    }

    // Every node's heartbeats say how many devices it holds.
    nodes[0].wait("hears of the others' devices", |c| {
        c["peers"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["devices"] == CONNS))
    });

    // A broadcast posted on node 1 reaches every connection of every node.
    let (status, b1) = nodes[0].post("/broadcast", b"first");
    assert_eq!(status, 200, "{b1}");
    assert_eq!(b1["websockets"], CONNS + 1, "node 1's own fan-out: {b1}");
    let seq1 = b1["seq"].as_u64().unwrap();
    let first_b = message(from_first());
    assert_eq!((&first_b["kind"], &first_b["seq"]), (&"broadcast".into(), &seq1.into()));
    for node in &nodes[1..] {
        node.wait("fanned out the first broadcast", |c| c["last_seq"] == seq1);
        let last = &node.get("/stats")["last_broadcast"];
        assert_eq!(
            (last["seq"].as_u64(), last["websockets"].as_u64()),
            (Some(seq1), Some(CONNS)),
            "node {}",
            node.k
        );
    }

    // A push posted on node 3 reaches the device held on node 1, and no one else.
    let (_, pushed) = nodes[2].post("/push?id=dev-a", b"to a on 1");
    assert_eq!(
        (&pushed["queued"], &pushed["node"]),
        (&true.into(), &"n1".into()),
        "{pushed}"
    );
    let p = message(from_first());
    assert_eq!((&p["kind"], &p["data"]), (&"push".into(), &"to a on 1".into()));
    let (_, missed) = nodes[2].post("/push?id=nobody", b"x");
    assert_eq!(
        (&missed["queued"], &missed["result"]),
        (&false.into(), &"not connected".into()),
        "{missed}"
    );

    // A second broadcast, from node 2: the device on node 1 has it.
    let (_, b2) = nodes[1].post("/broadcast", b"second");
    let seq2 = b2["seq"].as_u64().unwrap();
    assert!(seq2 > seq1, "{b2}");
    assert_eq!(message(from_first())["seq"], seq2);

    // The device moves to node 2 and resumes after the first broadcast: node 1 closes its old
    // connection (4002), the new one gets the second broadcast again, and pushes follow it.
    let (second, mut from_second) = device(
        &cl,
        &format!("ws://{}:{PORT}/ws?id=dev-a&since={seq1}", cl.node_addr(2)),
    );
    assert_eq!(from_second(), "connected");
    let resumed = message(from_second());
    assert_eq!(
        (&resumed["seq"], &resumed["data"]),
        (&seq2.into(), &"second".into()),
        "since recovery on another node"
    );
    assert_eq!(
        from_first(),
        "closed 4002",
        "the older connection on node 1 is replaced"
    );
    nodes[0].wait("counted the move", |c| c["devices_moved_away"] == 1);
    let (_, pushed) = nodes[0].post("/push?id=dev-a", b"to a on 2");
    assert_eq!(
        (&pushed["queued"], &pushed["node"]),
        (&true.into(), &"n2".into()),
        "{pushed}"
    );
    assert_eq!(message(from_second())["data"], "to a on 2");
    assert!(
        first.wait_timeout(Duration::from_secs(10)).is_some(),
        "the replaced device's client ends"
    );

    // Node 2 is killed: nodes 1 and 3 keep every connection and get the next broadcast; node 2
    // leaves the others' peers within the TTL; its load saw the two broadcasts before.
    let load2 = loads[1].take().unwrap();
    let summary2 = finish_load(load2, &jsons[1], Duration::from_secs(120));
    assert_eq!(
        summary2["counters"]["broadcasts"],
        2 * CONNS,
        "node 2's clients: {summary2}"
    );
    // SAFETY: kill on the pid of a child we started and have not reaped.
    unsafe { libc::kill(nodes[1].server.pid() as libc::pid_t, libc::SIGKILL) };
    nodes[1]
        .server
        .wait_timeout(Duration::from_secs(10))
        .expect("node 2 exits on SIGKILL");
    drop(second);
    for k in [0, 2] {
        nodes[k].wait("forgot node 2", |c| c["peers"].as_array().map(Vec::len) == Some(1));
        assert_eq!(nodes[k].conns(), CONNS, "node {} kept its connections", k + 1);
    }
    let (status, b3) = nodes[2].post("/broadcast", b"third");
    assert_eq!((status, &b3["websockets"]), (200, &CONNS.into()), "{b3}");
    let seq3 = b3["seq"].as_u64().unwrap();
    nodes[0].wait("fanned out the third broadcast", |c| c["last_seq"] == seq3);

    // Node 2 comes back (a new process under its old name): it joins again, starts after the
    // newest broadcast, and is not handed the old ones again when the broker restarts below
    // (its stream consumer has delivered nothing yet then).
    nodes[1] = Node::start(&cl, 2, &dir);
    nodes[0].wait("sees node 2 again", |c| c["peers"].as_array().map(Vec::len) == Some(2));
    assert_eq!(
        nodes[1].cluster()["last_seq"],
        seq3,
        "numbering goes on where the cluster is"
    );

    // The broker stops: a broadcast is refused as not published, a push says the others could
    // not be asked; it comes back (same store): the nodes reconnect by themselves and the next
    // broadcast reaches everyone still connected.
    nats.stop(Duration::from_secs(10));
    for k in [0, 2] {
        nodes[k].wait("saw the broker go", |c| c["state"] == "disconnected");
    }
    let (status, refused) = nodes[0].post("/broadcast", b"during the outage");
    assert_eq!((status, &refused["published"]), (503, &false.into()), "{refused}");
    let (_, unasked) = nodes[0].post("/push?id=dev-z", b"x");
    assert_eq!(
        (&unasked["queued"], &unasked["nodes_not_asked"]),
        (&false.into(), &true.into()),
        "{unasked}"
    );
    nats = nats_server(&cl, &store, &dir.join("nats2.log"));
    for node in &nodes {
        node.wait("reconnected", |c| {
            c["state"] == "connected" && c["disconnects"].as_u64() >= Some(1)
        });
    }
    // JetStream may need a moment after the broker is back: a refusal is honest (503), and
    // the next try goes through.
    let b4 = wait_for(Duration::from_secs(30), Duration::from_millis(500), || {
        let (status, b) = nodes[0].post("/broadcast", b"fourth");
        match status {
            200 => Some(b),
            503 => None,
            _ => panic!("broadcast after the broker's restart: {status} {b}"),
        }
    })
    .expect("a broadcast goes through once the broker is back");
    let seq4 = b4["seq"].as_u64().unwrap();
    assert!(seq4 > seq3, "numbers go on after the broker's restart: {b4}");
    for k in [0, 2] {
        let json = &jsons[k];
        let summary = finish_load(loads[k].take().unwrap(), json, Duration::from_secs(60));
        let c = &summary["counters"];
        assert_eq!(summary["established"], CONNS, "node {}: {summary}", k + 1);
        assert_eq!(
            c["broadcasts"],
            4 * CONNS,
            "node {}: every broadcast but the refused one: {summary}",
            k + 1
        );
        assert_eq!(
            c["targeted"],
            0,
            "node {}: pushes reached only their device: {summary}",
            k + 1
        );
        let cluster = nodes[k].cluster();
        assert_eq!(cluster["last_seq"], seq4, "{cluster}");
    }
    assert!(nodes[0].cluster()["broadcasts_not_published"].as_u64() >= Some(1));
    nodes[1].wait("fanned out the fourth broadcast", |c| c["last_seq"] == seq4);
    let c2 = nodes[1].cluster();
    assert_eq!(
        c2["broadcasts_received"], 1,
        "the restarted node got the fourth only, no replay: {c2}"
    );
    let metrics = http_in_netns(&nodes[0].ns, "GET", admin_addr(), "/metrics", b"")
        .unwrap()
        .1;
    assert!(
        metrics.contains("wsserver_cluster_broker_connected{node=\"n1\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wsserver_cluster_broadcasts_received_total"),
        "{metrics}"
    );
    common::promtool_check(&metrics);
    nodes.clear();
    drop(nats);
}
