//! Test helpers: a loopback server for test doubles. Not the project's emulator: each test
//! scripts exactly the replies it needs.

use crate::dashscope::{ApiKey, Client, ClientConfig};

pub(crate) const TEST_KEY: &str = "sk-unit-test-key-0123456789";

/// Serves `app` on 127.0.0.1:0 and returns its root URL.
pub(crate) async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

pub(crate) fn client(root: &str) -> Client {
    Client::new(
        ApiKey::new(TEST_KEY).unwrap(),
        ClientConfig {
            base_url: root.to_owned(),
            ..ClientConfig::default()
        },
    )
    .unwrap()
}

/// A raw TCP server that answers every connection with `response` verbatim, then closes:
/// for replies no well-behaved server would send (a body shorter than its Content-Length).
pub(crate) async fn serve_raw(response: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the request head (small in these tests), then answer and hang up.
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}
