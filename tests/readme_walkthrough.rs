//! README section "Your own data in five commands", run as written: the
//! block between the `walkthrough` markers is taken from README.md and run
//! by bash, so the README and what works cannot drift apart. The only
//! changes: the gateway's address becomes a free port (the block's
//! `127.0.0.1:8081`, and `SLUICE_LISTEN` for the gateway's default), and
//! the binaries on PATH are this build's.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::control::sibling_bin;
use common::*;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md")
}

fn walkthrough() -> String {
    let readme = readme();
    let start = readme
        .find("<!-- walkthrough")
        .expect("the README marks its walkthrough");
    let end = readme[start..]
        .find("<!-- /walkthrough -->")
        .expect("the walkthrough's end marker")
        + start;
    let block = &readme[start..end];
    let code = block
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a ```sh block in the walkthrough");
    code.to_owned()
}

/// Kills the walkthrough's background processes (its process group).
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.0)])
            .status();
    }
}

#[tokio::test]
async fn the_five_commands_serve_your_own_file() {
    let script = walkthrough();
    assert_eq!(
        script
            .lines()
            .filter(|l| l.starts_with("# ") && l[2..].starts_with(|c: char| c.is_ascii_digit()))
            .count(),
        5,
        "five numbered steps"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let script = script.replace("127.0.0.1:8081", &port.to_string());

    // Your own file: a year of sales, in a folder beside the built dashboard.
    let dir = std::env::temp_dir().join(format!("sluice-walkthrough-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut csv = String::from("day,region,units,revenue\n");
    for i in 0..2_000 {
        csv.push_str(&format!(
            "2025-{:02}-{:02},{},{},{}.{:02}\n",
            i % 12 + 1,
            i % 28 + 1,
            ["north", "south", "east"][i % 3],
            i % 17,
            i * 3,
            i % 100
        ));
    }
    std::fs::write(dir.join("sales.csv"), csv).unwrap();
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("web"),
        dir.join("web"),
    )
    .unwrap();

    let bins = sibling_bin("sluice-connector")
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Into a file, not a pipe: the background processes keep their stdout
    // open after bash is done.
    let printed = dir.join("stdout.txt");
    let mut child = Command::new("bash")
        .args(["-e", "-c", &script])
        .current_dir(&dir)
        .env("PATH", path)
        .env("SLUICE_LISTEN", port.to_string())
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::from(std::fs::File::create(&printed).unwrap()))
        .process_group(0)
        .spawn()
        .expect("bash");
    let _group = Group(child.id());
    let status = child.wait().unwrap();
    let stdout = std::fs::read_to_string(&printed).unwrap();
    assert!(status.success(), "the walkthrough failed: {stdout}");

    // Step 4: the file is the source, row for row.
    assert_same_rows(&dir.join("sales.parquet"), &dir.join("sales.csv"));

    // Step 5: the link opens the dashboard with a token of its own.
    let link = stdout
        .lines()
        .find_map(|l| l.strip_prefix("open "))
        .unwrap_or_else(|| panic!("no dashboard link in {stdout}"));
    let token = link.split("#token=").nth(1).expect("a token in the link");
    assert_eq!(token.split('.').count(), 3, "{link}");
    let (status, page) = raw_http(port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<title>Sluice</title>"), "{page}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The walkthrough starts with "Build once": the command above it must
/// build every binary the five commands run. A bare `cargo build` in this
/// workspace builds the root package alone (the gateway), and the README
/// once said just that, so `sluice-connector` was missing on a fresh
/// checkout while this suite, which builds everything, passed.
#[test]
fn the_build_command_builds_every_binary_the_walkthrough_runs() {
    let readme = readme();
    let section = readme
        .split("## Your own data in five commands")
        .nth(1)
        .expect("the walkthrough's section");
    let build: Vec<&str> = section
        .lines()
        .find_map(|l| l.trim().strip_prefix("cargo build"))
        .expect("a `cargo build` line before the walkthrough")
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = |key: &str| -> Vec<String> {
        meta[key]
            .as_array()
            .unwrap_or_else(|| panic!("cargo metadata has {key}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    // What a `cargo build` with these flags builds (cargo's rule).
    let named: Vec<&str> = build
        .windows(2)
        .filter(|w| w[0] == "-p" || w[0] == "--package")
        .map(|w| w[1])
        .collect();
    let everything = build.contains(&"--workspace") || build.contains(&"--all");
    let built = ids(if everything || !named.is_empty() {
        "workspace_members"
    } else {
        "workspace_default_members"
    });
    let mut bins = std::collections::HashMap::new();
    for p in meta["packages"].as_array().unwrap() {
        let id = p["id"].as_str().unwrap().to_owned();
        let name = p["name"].as_str().unwrap().to_owned();
        let is_built = built.contains(&id) && (named.is_empty() || named.contains(&name.as_str()));
        for t in p["targets"].as_array().unwrap() {
            if t["kind"].as_array().unwrap().iter().any(|k| k == "bin") {
                bins.insert(t["name"].as_str().unwrap().to_owned(), is_built);
            }
        }
    }

    let script = walkthrough();
    let run: std::collections::BTreeSet<&str> = script
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || "$();&|".contains(c)))
        .filter(|w| bins.contains_key(*w))
        .collect();
    assert!(
        run.contains("sluice") && run.contains("sluice-connector") && run.contains("sluice-fetch"),
        "the walkthrough runs the gateway, the connector and the fetch client: {run:?}"
    );
    for bin in run {
        assert!(
            bins[bin],
            "README's `cargo build{}` does not build `{bin}`, which the walkthrough runs",
            build.iter().map(|a| format!(" {a}")).collect::<String>()
        );
    }
}
