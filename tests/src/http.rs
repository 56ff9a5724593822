//! A blocking HTTP client for the tests (reqwest on a thread of its own).

use anyhow::{Context, Result, anyhow};
use std::time::Duration;

/// A blocking GET: (status, body).
pub fn http_get(url: &str) -> Result<(u16, String)> {
    http_request("GET", url, None)
}

/// A blocking POST of a JSON body: (status, body).
pub fn http_post(url: &str, body: &str) -> Result<(u16, String)> {
    http_request("POST", url, Some(body))
}

/// A blocking request with a 5 s read timeout (tests and the demo only talk to loopback).
pub fn http_request(method: &str, url: &str, body: Option<&str>) -> Result<(u16, String)> {
    http_call(method, url, body, None, Duration::from_secs(5))
}

/// A blocking HTTP request with optional Basic credentials and a read timeout: (status, body).
/// reqwest on a thread and runtime of its own, so it may be called from anywhere (a test's
/// async context included); https certificates are not checked here — the tests check them
/// with their own clients where it matters.
pub fn http_call(
    method: &str,
    url: &str,
    body: Option<&str>,
    basic: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let (url, body) = (url.to_string(), body.unwrap_or("").to_string());
    let basic = basic.map(|(u, p)| (u.to_string(), p.to_string()));
    std::thread::spawn(move || -> Result<(u16, String)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            shared::api::install_tls_provider();
            let client = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(timeout)
                .http1_only()
                .danger_accept_invalid_certs(true)
                .build()?;
            let mut req = client
                .request(method, &url)
                .header("Content-Type", "application/json")
                .body(body);
            if let Some((u, p)) = basic {
                req = req.basic_auth(u, Some(p));
            }
            let resp = req.send().await.with_context(|| url.clone())?;
            let code = resp.status().as_u16();
            Ok((code, resp.text().await.with_context(|| url.clone())?))
        })
    })
    .join()
    .map_err(|_| anyhow!("the HTTP client's thread panicked"))?
}
