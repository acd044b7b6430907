//! A git server that accepts connections and never answers cannot wedge an automation.

use anyhow::Result;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use weir_api::{GitRepository, ImageUpdateAutomation};
use weir_e2e::wait_until;

use crate::fixture::*;

/// The automation's clone against a silent server ends within the source's timeout (an Event
/// says so), a retry while that clone still waits on the server says so instead of starting
/// another thread, and once the source's URL is fixed the automation runs at once: the stuck
/// operation holds back only its own URL.
#[tokio::test]
async fn a_silent_git_server_times_out_and_holds_back_no_fix() -> Result<()> {
    let f = Fixture::start().await?;
    f.image_and_policy(&["1.0.0"], "*").await?;
    let repo = f.git_source(&[("apps/app.yaml", "kind: X\n")]).await?;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_url = format!("http://{}/repo.git", silent.local_addr()?);
    let _holder = tokio::spawn(async move {
        while let Ok((mut conn, _)) = silent.accept().await {
            tokio::spawn(async move {
                // Reads what the client sends and answers nothing, until the client closes.
                let mut sink = vec![];
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut sink).await;
            });
        }
    });
    let sources = f.api::<GitRepository>();
    let point_at = |url: &str, timeout: &str| json!({ "spec": { "url": url, "timeout": timeout } });
    sources
        .patch(
            "fleet",
            &PatchParams::default(),
            &Patch::Merge(point_at(&silent_url, "1s")),
        )
        .await?;
    f.automation("auto", automation_spec(None)).await?;

    let api = f.api::<ImageUpdateAutomation>();
    for fragment in ["timed out after", "still waiting on the server"] {
        wait_until(&format!("auto's Ready message to say {fragment:?}"), || {
            let api = api.clone();
            async move {
                let auto = api.get("auto").await.map_err(|e| e.to_string())?;
                let message = ready_message(&auto.conditions());
                if message.contains(fragment) {
                    Ok(())
                } else {
                    Err(message)
                }
            }
        })
        .await?;
    }
    assert!(
        !f.warnings("auto", weir_api::reasons::GIT_OPERATION_FAILED)
            .await?
            .is_empty(),
        "the timeout is a Warning event"
    );

    sources
        .patch(
            "fleet",
            &PatchParams::default(),
            &Patch::Merge(point_at(&repo.private_http_url(), "60s")),
        )
        .await?;
    f.wait_handled("auto", "url-fixed").await?;
    Ok(())
}
