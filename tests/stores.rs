//! Object stores against a real directory and the local S3 server: atomic commit,
//! abort, conditional writes, multipart streaming, listing, reading back.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use flow::engines::store::fs::FsStore;
use flow::engines::store::s3::{S3Config, S3Store};
use flow::engines::store::{PutMode, Store, StoreError};
use flow::plan::Secret;

async fn s3_store(bucket: &str, prefix: &str, part_size: usize) -> S3Store {
    S3Store::connect(S3Config {
        connection: "lake".into(),
        endpoint: Some(support::s3_endpoint()),
        region: Some(support::aws_region()),
        bucket: bucket.into(),
        prefix: prefix.into(),
        path_style: None,
        access_key_id: Some(Secret::new("test")),
        secret_access_key: Some(Secret::new("test")),
        part_size,
        parts_in_flight: 2,
    })
    .await
    .expect("s3 store builds")
}

async fn read_all(store: &dyn Store, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = store.open(key).await.expect("open");
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    out
}

/// Behaviour every store must have.
async fn contract(store: Arc<dyn Store>) {
    // Nothing is visible before commit; an abort leaves nothing.
    let mut w = store.create("t/201506/part-000.csv").await.unwrap();
    w.write(Bytes::from_static(b"a,b\n")).await.unwrap();
    assert!(store.head("t/201506/part-000.csv").await.unwrap().is_none());
    w.abort().await;
    assert!(store.head("t/201506/part-000.csv").await.unwrap().is_none());
    assert!(
        store.list("t/").await.unwrap().is_empty(),
        "abort left something"
    );

    // A writer dropped without commit (a killed task) leaves nothing either.
    {
        let mut w = store.create("t/dropped.csv").await.unwrap();
        w.write(Bytes::from_static(b"x")).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(store.head("t/dropped.csv").await.unwrap().is_none());

    // Commit makes it visible whole; a second write of the same key replaces it.
    for content in [&b"first version\n"[..], &b"second\n"[..]] {
        let mut w = store.create("t/201506/part-000.csv").await.unwrap();
        for piece in content.chunks(3) {
            w.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        let meta = w.commit().await.unwrap();
        assert_eq!(meta.size, content.len() as u64);
        assert_eq!(
            read_all(store.as_ref(), "t/201506/part-000.csv").await,
            content
        );
    }

    // put / get / IfAbsent / list / delete
    store
        .put(
            "t/_manifest.json",
            Bytes::from_static(b"{}"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert_eq!(
        store.get("t/_manifest.json").await.unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    let err = store
        .put(
            "t/_manifest.json",
            Bytes::from_static(b"{2}"),
            PutMode::IfAbsent,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert_eq!(
        store.get("t/_manifest.json").await.unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    let keys: Vec<String> = store
        .list("t/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["t/201506/part-000.csv", "t/_manifest.json"]);
    store.delete("t/_manifest.json").await.unwrap();
    store.delete("t/_manifest.json").await.unwrap();
    assert!(store.get("t/_manifest.json").await.unwrap().is_none());
    assert!(store.get("nope").await.unwrap().is_none());
    assert!(matches!(
        store.open("nope").await.err().expect("missing object"),
        StoreError::NotFound { .. }
    ));

    // Bad keys never reach the backend.
    for bad in ["../escape", "/abs", "a//b"] {
        assert!(matches!(
            store.create(bad).await.err().expect("bad key"),
            StoreError::BadKey { .. }
        ));
    }

    // Conditional create under a race: exactly one of 16 writers wins.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .put(
                    "race/marker",
                    Bytes::from(format!("writer {i}")),
                    PutMode::IfAbsent,
                )
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn fs_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path().join("exports")));
    contract(store.clone()).await;
    // No temp files are left behind.
    let mut leftovers = Vec::new();
    for e in walk(dir.path()) {
        if e.contains(".flow-tmp-") {
            leftovers.push(e);
        }
    }
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

#[tokio::test]
async fn s3_store_contract() {
    let bucket = support::S3Bucket::new("stores").await;
    let store: Arc<dyn Store> = Arc::new(s3_store(bucket.name(), "exp/", 5 << 20).await);
    contract(store.clone()).await;
    // The prefix is applied in the bucket and hidden from keys.
    let keys = bucket.keys().await;
    assert!(
        keys.iter().any(|k| k == "exp/t/201506/part-000.csv"),
        "{keys:?}"
    );
    assert_eq!(
        store.location("a/b"),
        format!("s3://{}/exp/a/b", bucket.name())
    );
}

#[tokio::test]
async fn s3_multipart_streams_in_bounded_parts() {
    let bucket = support::S3Bucket::new("multipart").await;
    let store = s3_store(bucket.name(), "", 5 << 20).await;
    // 23 MiB in odd-sized writes: four full parts and a short last one.
    let total = 23 << 20;
    let mut expected = blake3::Hasher::new();
    let mut w = store.create("big/object.bin").await.unwrap();
    let mut written = 0usize;
    let mut i = 0u8;
    while written < total {
        let n = (100_003).min(total - written);
        let chunk: Vec<u8> = (0..n)
            .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
            .collect();
        expected.update(&chunk);
        w.write(Bytes::from(chunk)).await.unwrap();
        written += n;
        i = i.wrapping_add(1);
    }
    let meta = w.commit().await.unwrap();
    assert_eq!(meta.size, total as u64);
    let head = bucket
        .client()
        .head_object()
        .bucket(bucket.name())
        .key("big/object.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(total as i64));
    // Multipart ETags end in -<parts>.
    assert!(
        head.e_tag().unwrap_or_default().contains("-5"),
        "{:?}",
        head.e_tag()
    );
    let data = read_all(&store, "big/object.bin").await;
    assert_eq!(blake3::hash(&data), expected.finalize());

    // An aborted multipart upload leaves neither object nor upload.
    let mut w = store.create("big/aborted.bin").await.unwrap();
    w.write(Bytes::from(vec![7u8; 11 << 20])).await.unwrap();
    w.abort().await;
    assert!(store.head("big/aborted.bin").await.unwrap().is_none());
    let uploads = bucket
        .client()
        .list_multipart_uploads()
        .bucket(bucket.name())
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
}

#[tokio::test]
async fn s3_server_side_urls() {
    let store = s3_store("some-bucket", "pre", 5 << 20).await;
    let t = store.server_side_target("a b/x.csv").unwrap();
    assert_eq!(
        t.url,
        format!("{}/some-bucket/pre/a%20b/x.csv", support::s3_endpoint())
    );
    assert!(store.server_side_target("glob*/x").is_none());
    assert!(
        !format!("{t:?}").contains("test\""),
        "debug output hides keys"
    );
}

/// Four writers streaming at once into one store hold no more part buffers than the
/// store's `parts_in_flight` (2 here), all finish (a writer waiting for a buffer gets
/// one when an upload ends), and every object holds exactly its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_writers_of_one_store_share_its_part_budget() {
    let bucket = support::S3Bucket::new("budget").await;
    let store = Arc::new(s3_store(bucket.name(), "", 5 << 20).await);
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (store, peak, sampling) = (store.clone(), peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(
                    store.part_buffers_in_use(),
                    std::sync::atomic::Ordering::Relaxed,
                );
                tokio::time::sleep(std::time::Duration::from_micros(200)).await;
            }
        })
    };
    let mut writers = Vec::new();
    for w in 0..4u8 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let key = format!("budget/{w}.bin");
            let mut hasher = blake3::Hasher::new();
            let mut writer = store.create(&key).await.unwrap();
            // 13 MiB: two full parts and a short one, in 64 KiB writes.
            for i in 0..208u32 {
                let chunk = Bytes::from(vec![(i as u8) ^ w; 64 << 10]);
                hasher.update(&chunk);
                writer.write(chunk).await.unwrap();
            }
            writer.commit().await.unwrap();
            (key, hasher.finalize())
        }));
    }
    let done = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        let mut out = Vec::new();
        for w in writers {
            out.push(w.await.unwrap());
        }
        out
    })
    .await
    .expect("every writer finishes: no writer starves waiting for a part buffer");
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(peak >= 1, "the sampler saw the buffers in use");
    assert!(peak <= 2, "{peak} part buffers at once; the store allows 2");
    assert_eq!(
        store.part_buffers_in_use(),
        0,
        "every buffer was given back"
    );
    for (key, hash) in done {
        let data = read_all(store.as_ref(), &key).await;
        assert_eq!(data.len(), 13 << 20, "{key}");
        assert_eq!(blake3::hash(&data), hash, "{key}");
    }
}
