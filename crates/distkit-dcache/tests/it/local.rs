use std::time::Duration;

use bytes::Bytes;
use distkit_core::{Cache, Error, Loaded, Loader};
use distkit_dcache::DistributedCache;

#[tokio::test]
async fn the_seed_api_works_locally() {
    let cache = DistributedCache::new(1000, Some(Duration::from_secs(3600))).unwrap();
    cache.set("user:1", "John Doe").await.unwrap();
    cache.set("user:2", "Jane Smith").await.unwrap();
    assert_eq!(
        cache.get("user:1").await.unwrap().as_deref(),
        Some(&b"John Doe"[..])
    );
    assert!(cache.delete("user:1").await.unwrap());
    assert!(!cache.delete("user:1").await.unwrap());
    assert_eq!(cache.get("user:1").await.unwrap(), None);
}

#[tokio::test]
async fn per_entry_ttl_expires() {
    let cache = DistributedCache::new(100, None).unwrap();
    cache
        .set_with_ttl("short", "x", Duration::from_millis(50))
        .await
        .unwrap();
    cache.set("long", "y").await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(cache.get("short").await.unwrap(), None);
    assert!(cache.get("long").await.unwrap().is_some());
}

#[tokio::test]
async fn expired_entries_nobody_reads_are_swept() {
    let cache = DistributedCache::builder(distkit_core::NodeId::new("n").unwrap())
        .staleness_check(Duration::from_millis(100))
        .build()
        .unwrap();
    let maintenance = cache.start_maintenance().unwrap();
    for i in 0..100 {
        cache
            .set_with_ttl(&format!("k{i}"), "v", Duration::from_millis(50))
            .await
            .unwrap();
    }
    cache.set("keeper", "v").await.unwrap();
    cache.sync().await;
    assert_eq!(cache.local_len(), 101);
    tokio::time::sleep(Duration::from_millis(400)).await;
    cache.sync().await;
    assert_eq!(
        cache.local_len(),
        1,
        "the sweep removed what expired without a read"
    );
    maintenance.shutdown().await;
}

#[tokio::test]
async fn capacity_is_bounded() {
    let cache = DistributedCache::new(100, None).unwrap();
    for i in 0..1000 {
        cache.set(&format!("k{i}"), "v").await.unwrap();
    }
    cache.sync().await;
    assert!(cache.local_len() <= 100, "{}", cache.local_len());
}

#[tokio::test]
async fn byte_bound_counts_keys_and_values() {
    let cache = DistributedCache::builder(distkit_core::NodeId::new("n").unwrap())
        .max_bytes(10_000)
        .build()
        .unwrap();
    for i in 0..100 {
        cache.set(&format!("k{i}"), vec![0u8; 1000]).await.unwrap();
    }
    cache.sync().await;
    assert!(cache.local_len() <= 10, "{}", cache.local_len());
}

#[tokio::test]
async fn get_or_load_caches_success_only() {
    let cache = DistributedCache::new(100, None).unwrap();
    let e = cache
        .get_or_load(
            "k",
            Loader::new(|| async { Err::<Bytes, _>(std::io::Error::other("db down")) }),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Load { .. }), "{e}");
    assert_eq!(
        cache.get("k").await.unwrap(),
        None,
        "a failed load is not cached"
    );
    let v = cache
        .get_or_load(
            "k",
            Loader::new(|| async {
                Ok::<_, std::io::Error>(Loaded::with_ttl(b"v".to_vec(), Duration::from_millis(50)))
            }),
        )
        .await
        .unwrap();
    assert_eq!(&v[..], b"v");
    assert!(cache.get("k").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        cache.get("k").await.unwrap(),
        None,
        "the loader's ttl applies"
    );
}

#[tokio::test]
async fn bad_input_is_typed() {
    let cache = DistributedCache::builder(distkit_core::NodeId::new("n").unwrap())
        .max_key_len(8)
        .max_value_len(4)
        .build()
        .unwrap();
    assert!(matches!(
        cache.set("", "v").await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        cache.set("123456789", "v").await,
        Err(Error::TooLarge {
            what: "cache key",
            actual: 9,
            limit: 8
        })
    ));
    assert!(matches!(
        cache.set("k", "12345").await,
        Err(Error::TooLarge {
            what: "cache value",
            actual: 5,
            limit: 4
        })
    ));
    assert!(matches!(
        Cache::get(&cache, &"x".repeat(10_000)).await,
        Err(Error::TooLarge { .. })
    ));
    let big = cache
        .get_or_load(
            "k",
            Loader::new(|| async { Ok::<_, std::io::Error>(vec![0u8; 100]) }),
        )
        .await;
    assert!(matches!(big, Err(Error::TooLarge { .. })), "{big:?}");
    assert!(DistributedCache::new(0, None).is_err());
    assert!(
        cache
            .add_node(
                distkit_core::NodeId::new("p").unwrap(),
                "http://127.0.0.1:1"
            )
            .await
            .is_err(),
        "no token"
    );
}
