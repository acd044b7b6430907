//! Servers that do not answer: `spec.timeout` ends the fetch and releases its thread.

use anyhow::Result;
use serde_json::json;
use weir_api::{condition::find_condition, reasons, types};
use weir_e2e::wait_until;

use crate::fixture::*;

#[tokio::test]
async fn unreachable_or_silent_servers_time_out_release_their_thread_and_hold_back_no_fix()
-> Result<()> {
    let f = Fixture::start().await?;
    // A port nobody listens on, and a server that accepts connections and never answers.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_addr = silent.local_addr()?;
    // Counts the connections the client gave up on (closed its end).
    let released = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = released.clone();
    let holder = tokio::spawn(async move {
        while let Ok((mut conn, _)) = silent.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut sink = vec![];
                // Reads what the client sends, answers nothing, until the client closes.
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut sink).await;
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    f.create(
        "unreachable",
        json!({ "url": format!("http://{closed}/repo.git"), "interval": "10m" }),
    )
    .await?;
    f.create("silent", json!({ "url": format!("http://{silent_addr}/repo.git"), "interval": "10m", "timeout": "2s" })).await?;

    let unreachable = f.wait_ready("unreachable", "False").await?;
    assert_eq!(ready_reason(&unreachable), reasons::GIT_OPERATION_FAILED);
    // The first attempt times out; its thread stays stuck on the silent connection, so retries
    // say so instead of piling up threads.
    let api = f.api.clone();
    wait_until("silent to report the stuck operation", || {
        let api = api.clone();
        async move {
            let repo = api.get("silent").await.map_err(|e| e.to_string())?;
            let conds = repo.status.map(|s| s.conditions).unwrap_or_default();
            let message = find_condition(&conds, types::READY)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            if message.contains("still waiting on the server") {
                Ok(())
            } else {
                Err(message)
            }
        }
    })
    .await?;
    let events = f.events_text().await?;
    assert!(
        events.contains("git operation timed out after 2s"),
        "the timeout was reported as an event"
    );

    // The URL fixed, the repository is Ready at once: the operation still stuck on the silent
    // server holds back only that server's URL.
    let (_, git) = harness_repo().await?;
    f.api
        .patch(
            "silent",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "spec": { "url": git.http_url() } })),
        )
        .await?;
    let fixed = f.wait_ready("silent", "True").await?;
    assert!(
        revision(&fixed).ends_with(&git.head()?),
        "{}",
        revision(&fixed)
    );
    assert_eq!(
        released.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the fix did not wait for the stuck operation"
    );
    // And the stuck operation's thread is released: libgit2 gives up on the silent socket.
    wait_until("the silent connection to be given up", || {
        let released = released.clone();
        async move {
            match released.load(std::sync::atomic::Ordering::SeqCst) {
                0 => Err("still held"),
                _ => Ok(()),
            }
        }
    })
    .await?;
    holder.abort();
    Ok(())
}
