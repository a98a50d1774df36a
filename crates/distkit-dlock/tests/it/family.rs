//! The lock family (fair lock, read-write lock, semaphore) on Redis and in-process, through
//! the public API: FIFO order, writer preference, permit bounds, resizing, and cancellation
//! at random points leaving no lock, queue entry or permit behind.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distkit_core::{
    AcquireOptions, DistributedLock, DistributedRwLock, DistributedSemaphore, Error,
};
use distkit_dlock::{LocalFairLock, LocalLock, LocalRwLock, LocalSemaphore, RedisLock};
use distkit_testkit::{RedisServer, Reply};
use rand::{Rng, SeedableRng};

use crate::server_and_lock;

fn wait(ms: u64) -> AcquireOptions {
    AcquireOptions::new().wait(Duration::from_millis(ms))
}

/// Every key on the server except the ones meant to outlive grants (fencing counters and
/// semaphore limits).
fn leftovers(server: &RedisServer) -> Vec<String> {
    let Reply::Array(keys) = server.command(&["KEYS", "*"]).unwrap() else {
        panic!("KEYS answers an array")
    };
    let mut left: Vec<String> = keys
        .iter()
        .filter_map(Reply::as_text)
        .filter(|k| !k.ends_with(":fence") && !k.ends_with(":limit"))
        .collect();
    left.sort();
    left
}

/// Waits (bounded) for background clean-ups, then returns what is left.
async fn settled_leftovers(server: &RedisServer) -> Vec<String> {
    for _ in 0..40 {
        if leftovers(server).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    leftovers(server)
}

/// Waiters that arrive one after another are granted in that order.
async fn fifo_order(fair: Arc<dyn DistributedLock>) {
    let first = fair.acquire("line", Duration::from_secs(1)).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (fair, order) = (fair.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let g = fair
                .acquire("line", Duration::from_secs(20))
                .await
                .expect("granted in turn");
            order.lock().unwrap().push(i);
            // A newcomer arriving now must not overtake the ones still queued.
            tokio::time::sleep(Duration::from_millis(5)).await;
            g.release().await.unwrap();
        }));
        // Arrival order is what the queue must keep.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    first.release().await.unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("every waiter is granted")
            .unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fair_lock_grants_in_arrival_order() {
    let (_server, lock) = server_and_lock(Duration::from_secs(10));
    fifo_order(Arc::new(lock.fair())).await;
    fifo_order(Arc::new(
        LocalFairLock::new(Duration::from_secs(10)).unwrap(),
    ))
    .await;
}

/// A writer waiting behind 16 readers that keep cycling gets the lock: new readers queue
/// behind it. While it holds the lock no reader is inside.
async fn writer_is_not_starved(rw: Arc<dyn DistributedRwLock>) {
    let readers_inside = Arc::new(AtomicU32::new(0));
    let writing = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicU32::new(0));
    let mut readers = Vec::new();
    for i in 0..16u64 {
        let (rw, inside, writing, stop) = (
            rw.clone(),
            readers_inside.clone(),
            writing.clone(),
            stop.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(i);
            // Bounded: at most 2,000 reads per reader.
            for _ in 0..2_000 {
                if stop.load(Ordering::SeqCst) == 1 {
                    break;
                }
                let g = rw
                    .read_lock()
                    .acquire("doc", Duration::from_secs(20))
                    .await
                    .expect("readers are granted");
                inside.fetch_add(1, Ordering::SeqCst);
                assert_eq!(
                    writing.load(Ordering::SeqCst),
                    0,
                    "a reader overlapped the writer"
                );
                tokio::time::sleep(Duration::from_millis(rng.random_range(1..6))).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                g.release().await.unwrap();
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let w = rw
        .write_lock()
        .acquire("doc", Duration::from_secs(10))
        .await
        .expect("the writer is not starved by cycling readers");
    writing.store(1, Ordering::SeqCst);
    assert_eq!(
        readers_inside.load(Ordering::SeqCst),
        0,
        "readers inside with the writer"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    writing.store(0, Ordering::SeqCst);
    w.release().await.unwrap();
    stop.store(1, Ordering::SeqCst);
    for r in readers {
        tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .expect("readers finish")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_is_not_starved_by_sixteen_cycling_readers() {
    let (_server, lock) = server_and_lock(Duration::from_secs(10));
    writer_is_not_starved(Arc::new(lock.rw())).await;
    writer_is_not_starved(Arc::new(LocalRwLock::new(Duration::from_secs(10)).unwrap())).await;
}

/// Readers share and a writer excludes; fencing tokens of both sides come from one counter.
async fn readers_share_writers_exclude(rw: Arc<dyn DistributedRwLock>) {
    let (r, w) = (rw.read_lock(), rw.write_lock());
    let a = r.try_acquire("x").await.unwrap().expect("free");
    let b = r.try_acquire("x").await.unwrap().expect("readers share");
    assert!(w.try_acquire("x").await.unwrap().is_none());
    assert!(b.fencing_token() > a.fencing_token());
    let last_read = b.fencing_token();
    assert!(a.release().await.unwrap());
    assert!(
        w.try_acquire("x").await.unwrap().is_none(),
        "one reader is left"
    );
    assert!(b.release().await.unwrap());
    let wg = w
        .try_acquire("x")
        .await
        .unwrap()
        .expect("free for the writer");
    assert!(wg.fencing_token() > last_read);
    assert!(r.try_acquire("x").await.unwrap().is_none());
    assert!(w.try_acquire("x").await.unwrap().is_none());
    let write_fence = wg.fencing_token();
    // Found through the node: a reader's release with the writer's token freed the
    // in-process write lease. Each side touches only its own leases.
    let held_write = wg.lease().clone();
    assert!(!r.release(&held_write).await.unwrap());
    assert!(!r.is_held(&held_write).await.unwrap());
    assert!(w.is_held(&held_write).await.unwrap());
    assert!(r.try_acquire("x").await.unwrap().is_none(), "still written");
    // A reader waiting for the writer is let in by its release.
    let waiting = tokio::spawn({
        let r = r.clone();
        async move { r.acquire("x", Duration::from_secs(5)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(wg.release().await.unwrap());
    let rg = waiting
        .await
        .unwrap()
        .expect("woken by the writer's release");
    assert!(rg.fencing_token() > write_fence);
    // A released lease is no longer held; releasing it again is a no.
    let lease = rg.lease().clone();
    assert!(rg.release().await.unwrap());
    assert!(!r.release(&lease).await.unwrap());
    assert!(!r.is_held(&lease).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_share_and_writers_exclude() {
    let (server, lock) = server_and_lock(Duration::from_secs(10));
    readers_share_writers_exclude(Arc::new(lock.rw())).await;
    assert_eq!(settled_leftovers(&server).await, Vec::<String>::new());
    readers_share_writers_exclude(Arc::new(LocalRwLock::new(Duration::from_secs(10)).unwrap()))
        .await;
}

/// At most N holders at once under 12 contending tasks, and a resize while held takes
/// effect: raising lets waiters in, lowering holds new grants back until holders leave.
async fn permits_are_bounded_and_resizable(sem: Arc<dyn DistributedSemaphore>) {
    sem.set_permits("pool", 3).await.unwrap();
    let inside = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..12u64)
        .map(|i| {
            let (sem, inside, most) = (sem.clone(), inside.clone(), most.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(i);
                for _ in 0..15 {
                    let g = sem
                        .acquire("pool", Duration::from_secs(20))
                        .await
                        .expect("a permit");
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..4))).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    g.release().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("no stall")
            .unwrap();
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 3, "{most} holders at once with 3 permits");
    assert!(most >= 2, "permits were shared ({most} at most)");

    // Resize while held.
    let a = sem.acquire_permits("pool", 2, wait(0)).await.unwrap();
    let b = sem.acquire_permits("pool", 1, wait(0)).await.unwrap();
    assert!(sem.try_acquire("pool").await.unwrap().is_none());
    let waiting = tokio::spawn({
        let sem = sem.clone();
        async move { sem.acquire_permits("pool", 2, wait(5_000)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    sem.set_permits("pool", 5).await.unwrap();
    let c = waiting
        .await
        .unwrap()
        .expect("raising the limit lets the waiter in");
    assert_eq!(
        sem.permits("pool").await.unwrap(),
        distkit_core::PermitCount {
            limit: 5,
            in_use: 5
        }
    );
    sem.set_permits("pool", 2).await.unwrap();
    let c_fence = c.fencing_token();
    assert!(c.release().await.unwrap());
    // 3 in use under a limit of 2: nobody new gets in, holders keep theirs.
    assert!(sem.try_acquire("pool").await.unwrap().is_none());
    assert!(a.is_held().await.unwrap() && b.is_held().await.unwrap());
    assert!(a.release().await.unwrap());
    let d = sem
        .try_acquire("pool")
        .await
        .unwrap()
        .expect("1 + 1 fits under 2");
    assert!(d.fencing_token() > c_fence);
    assert!(sem.try_acquire("pool").await.unwrap().is_none());
    assert!(b.release().await.unwrap() && d.release().await.unwrap());
    // More permits than the limit waits (the limit may rise) and ends busy.
    let err = sem.acquire_permits("pool", 9, wait(50)).await.unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err:?}");
    let zero = sem.acquire_permits("pool", 0, wait(0)).await.unwrap_err();
    assert!(matches!(zero, Error::InvalidInput { .. }), "{zero:?}");
    assert!(matches!(
        sem.set_permits("pool", 0).await.unwrap_err(),
        Error::InvalidInput { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_bounds_its_holders_and_can_be_resized_while_held() {
    let (server, lock) = server_and_lock(Duration::from_secs(10));
    permits_are_bounded_and_resizable(Arc::new(lock.semaphore(1).unwrap())).await;
    assert_eq!(settled_leftovers(&server).await, Vec::<String>::new());
    permits_are_bounded_and_resizable(Arc::new(
        LocalSemaphore::new(Duration::from_secs(10), 1).unwrap(),
    ))
    .await;
}

/// 24 acquisitions contend on one name; 30 % of them are cancelled at a random point (a
/// timeout around the call drops the future wherever it is). The rest are granted, and
/// afterwards nothing is left: no lock, queue entry, waiting-writer mark or permit.
async fn cancel_thirty_percent(locks: Vec<Arc<dyn DistributedLock>>, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let lock = locks[i % locks.len()].clone();
        let cancel_after = rng
            .random_bool(0.3)
            .then(|| Duration::from_micros(rng.random_range(0..30_000)));
        let hold = Duration::from_millis(rng.random_range(1..4));
        tasks.push(tokio::spawn(async move {
            let acquire = lock.acquire("c", Duration::from_secs(30));
            let guard = match cancel_after {
                Some(after) => match tokio::time::timeout(after, acquire).await {
                    Ok(g) => g,
                    Err(_) => return false,
                },
                None => acquire.await,
            };
            let guard = guard.expect("granted within 30 s");
            tokio::time::sleep(hold).await;
            guard.release().await.expect("released");
            true
        }));
        tokio::time::sleep(Duration::from_micros(rng.random_range(0..3_000))).await;
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("nobody is stuck behind a cancelled waiter")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_thirty_percent_of_acquires_leaves_nothing_behind() {
    let (server, lock) = server_and_lock(Duration::from_secs(10));
    let rw = lock.rw();
    let sem = lock.semaphore(2).unwrap();
    let kinds: Vec<(&str, Vec<Arc<dyn DistributedLock>>)> = vec![
        ("plain", vec![Arc::new(lock.clone())]),
        ("fair", vec![Arc::new(lock.fair())]),
        (
            "read-write",
            vec![rw.read_lock(), rw.write_lock(), rw.write_lock()],
        ),
        ("semaphore", vec![Arc::new(sem)]),
    ];
    for (seed, (kind, locks)) in kinds.into_iter().enumerate() {
        cancel_thirty_percent(locks, seed as u64).await;
        assert_eq!(
            settled_leftovers(&server).await,
            Vec::<String>::new(),
            "{kind}: keys left behind"
        );
        // And the name is free at once.
        assert!(
            lock.try_acquire("c").await.unwrap().is_some(),
            "{kind}: the lock stayed taken"
        );
        server.command(&["FLUSHALL"]).unwrap();
    }
    let local_rw = LocalRwLock::new(Duration::from_secs(10)).unwrap();
    cancel_thirty_percent(
        vec![Arc::new(
            LocalFairLock::new(Duration::from_secs(10)).unwrap(),
        )],
        7,
    )
    .await;
    cancel_thirty_percent(vec![local_rw.read_lock(), local_rw.write_lock()], 8).await;
    cancel_thirty_percent(
        vec![Arc::new(
            LocalSemaphore::new(Duration::from_secs(10), 2).unwrap(),
        )],
        9,
    )
    .await;
}

/// A waiter at the head of a fair queue that vanishes without a word (its entry left in
/// Redis, as a SIGKILL leaves it) holds the next waiter up for at most its entry's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_head_of_the_fair_queue_delays_the_next_by_at_most_its_entry_ttl() {
    let server = RedisServer::start().unwrap();
    let entry_ttl = Duration::from_millis(600);
    let lock = RedisLock::builder(server.url())
        .ttl(Duration::from_secs(10))
        .queue_entry_ttl(entry_ttl)
        .build()
        .unwrap();
    let fair = lock.fair();
    let holder = fair.acquire("q", Duration::from_secs(1)).await.unwrap();
    // The head waiter queues, then its task is aborted *and* its clean-up is lost: forget
    // the runtime's chance to run it by using a separate runtime that is shut down at once.
    let url = server.url();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let lock = RedisLock::builder(url)
                .queue_entry_ttl(entry_ttl)
                .build()
                .unwrap()
                .fair();
            let _ = tokio::time::timeout(
                Duration::from_millis(150),
                lock.acquire("q", Duration::from_secs(10)),
            )
            .await;
        });
        // Dropping the runtime here drops its spawned clean-up unrun.
        drop(rt);
    })
    .join()
    .unwrap();
    let Reply::Integer(queued) = server
        .command(&["ZCARD", "distkit:lock:{q}:queue"])
        .unwrap()
    else {
        panic!("ZCARD answers an integer")
    };
    assert_eq!(queued, 1, "the vanished waiter's entry is still queued");
    let next = tokio::spawn({
        let fair = fair.clone();
        async move {
            let g = fair.acquire("q", Duration::from_secs(10)).await.unwrap();
            (std::time::Instant::now(), g)
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let released = std::time::Instant::now();
    holder.release().await.unwrap();
    let (granted, g) = next.await.unwrap();
    let took = granted - released;
    assert!(
        took <= entry_ttl + Duration::from_millis(400),
        "the next waiter waited {took:?}"
    );
    g.release().await.unwrap();
}

/// Found by an outside review: under a limit of `u32::MAX` the in-process semaphore's count
/// of permits in use saturated, and every further grant fitted. Both backends refuse.
async fn the_largest_limit_still_bounds(sem: Arc<dyn DistributedSemaphore>) {
    sem.set_permits("max", u32::MAX).await.unwrap();
    let most = sem
        .acquire_permits("max", u32::MAX - 1, wait(0))
        .await
        .unwrap();
    let one = sem.acquire_permits("max", 1, wait(0)).await.unwrap();
    for k in [1, u32::MAX] {
        let err = sem.acquire_permits("max", k, wait(0)).await.unwrap_err();
        assert!(matches!(err, Error::Busy { .. }), "{k}: {err:?}");
    }
    assert_eq!(
        sem.permits("max").await.unwrap(),
        distkit_core::PermitCount {
            limit: u32::MAX,
            in_use: u32::MAX
        }
    );
    drop((most, one));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_of_u32_max_permits_still_bounds_its_holders() {
    let (_server, lock) = server_and_lock(Duration::from_secs(10));
    the_largest_limit_still_bounds(Arc::new(lock.semaphore(1).unwrap())).await;
    the_largest_limit_still_bounds(Arc::new(
        LocalSemaphore::new(Duration::from_secs(10), 1).unwrap(),
    ))
    .await;
}

/// Found by an outside review: the in-process fair lock did not exclude the plain lock of
/// the same name (Redis's does: they share the key). A fair lock made from a `LocalLock`
/// shares its names; a token of one releases through the other, as on Redis.
async fn fair_and_plain_exclude_each_other(
    plain: Arc<dyn DistributedLock>,
    fair: Arc<dyn DistributedLock>,
) {
    let f = fair.try_acquire("m").await.unwrap().expect("free");
    assert!(
        plain.try_acquire("m").await.unwrap().is_none(),
        "plain while fair holds"
    );
    assert!(
        plain.release(f.lease()).await.unwrap(),
        "one lock, one token"
    );
    let p = plain.try_acquire("m").await.unwrap().expect("free again");
    assert!(
        fair.try_acquire("m").await.unwrap().is_none(),
        "fair while plain holds"
    );
    assert!(p.fencing_token() > f.fencing_token());
    p.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fair_lock_and_a_plain_lock_of_one_name_exclude_each_other() {
    let (_server, lock) = server_and_lock(Duration::from_secs(10));
    fair_and_plain_exclude_each_other(Arc::new(lock.clone()), Arc::new(lock.fair())).await;
    let local = LocalLock::new(Duration::from_secs(10)).unwrap();
    fair_and_plain_exclude_each_other(Arc::new(local.clone()), Arc::new(local.fair())).await;
}

/// Found by an outside review: a plain waiter behind a fair holder (or a fair waiter behind
/// a plain holder) was not told of the release and found out at its next poll (0.5 to 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_of_one_kind_wakes_the_waiters_of_the_other_kind_at_once() {
    let (_server, lock) = server_and_lock(Duration::from_secs(10));
    let plain: Arc<dyn DistributedLock> = Arc::new(lock.clone());
    let fair: Arc<dyn DistributedLock> = Arc::new(lock.fair());
    for (holder, waiter, what) in [
        (fair.clone(), plain.clone(), "fair holder, plain waiter"),
        (plain.clone(), fair.clone(), "plain holder, fair waiter"),
    ] {
        let held = holder.try_acquire("x").await.unwrap().expect("free");
        let waiting = tokio::spawn(async move {
            let g = waiter.acquire("x", Duration::from_secs(5)).await.unwrap();
            (std::time::Instant::now(), g)
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let released = std::time::Instant::now();
        held.release().await.unwrap();
        let (at, g) = waiting.await.unwrap();
        let took = at - released;
        // A poll would come 0.4 s or more after the release.
        assert!(
            took < Duration::from_millis(250),
            "{what}: woken after {took:?}"
        );
        g.release().await.unwrap();
    }
}

/// Found by an outside review: a semaphore limit key holding `-5`, `0` or `1e23` (written by
/// another program) was taken as a limit. It is refused with a typed error, as a bad fencing
/// counter is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_limit_key_out_of_range_is_a_typed_error() {
    let (server, lock) = server_and_lock(Duration::from_secs(10));
    let sem = lock.semaphore(2).unwrap();
    for bad in ["-5", "0", "1.5", "1e23", "4294967296", "garbage"] {
        server
            .command(&["SET", "distkit:lock:sem:{k}:limit", bad])
            .unwrap();
        let err = sem.acquire_permits("k", 1, wait(0)).await.unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }), "{bad}: {err:?}");
        let err = sem.permits("k").await.unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }), "{bad}: {err:?}");
    }
    sem.set_permits("k", 4_294_967_295).await.unwrap();
    assert_eq!(sem.permits("k").await.unwrap().limit, u32::MAX);
}
