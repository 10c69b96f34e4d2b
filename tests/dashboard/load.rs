//! Load (measured, not run by CI: `#[ignore]`): the page with 1,000 instances in three zones fed by
//! a generated journal; prints how long an appended record takes to show in the page.
//! `cargo test --test dashboard -- --ignored --nocapture load`

use std::time::{Duration, Instant};

use rollgate::spec::Manifest;
use rollgate::state::{Event, Store};

use super::browser::{browser, connect};
use super::support::{Served, actor};

const N: usize = 1000;

fn instance(i: usize) -> String {
    format!("h{i:04}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it by name"]
async fn load_a_thousand_instances_update_in_the_page_within_a_second() {
    let Some((driver, chromium)) = browser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let store = Store::at(&state);
    let mut hosts = String::new();
    for i in 0..N {
        let zone = ["a", "b", "c"][i % 3];
        hosts.push_str(&format!(
            "        - {{name: {}, address: \"127.0.0.1:{}\", labels: {{zone: {zone}}}}}\n",
            instance(i),
            10000 + i
        ));
    }
    let yaml = format!(
        "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata:\n  name: big\nspec:\n  version: \"2\"\n  target:\n    hosts:\n      spreadBy: zone\n      hosts:\n{hosts}  strategy:\n    rolling: {{maxSurge: 0, maxUnavailable: 10%}}\n"
    );
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, yaml).unwrap();
    let m = Manifest::load(&[path], None).unwrap();
    let id = "big-1";
    store.save_manifest("big", id, &m.resolved()).unwrap();
    let mut journal = store.journal("big").unwrap();
    let mut events = vec![
        Event::Started {
            rollout: id.into(),
            from: Some("1".into()),
            to: "2".into(),
            strategy: rollgate::state::StrategyKind::Rolling,
            actor: actor(),
            steps: 10,
        },
        Event::StepStarted {
            rollout: id.into(),
            step: 0,
            kind: rollgate::plan::StepKind::Scale,
            note: "replace a wave".into(),
        },
    ];
    for i in 0..N {
        events.push(Event::InstanceChanged {
            rollout: id.into(),
            instance: instance(i),
            version: "1".into(),
            ok: true,
            detail: String::new(),
        });
    }
    journal.append_all(events).unwrap();

    let served = Served::start(&state);
    let (_driver, client) = connect(&driver, &chromium).await;
    let opened = Instant::now();
    client.goto(&format!("{}#big", served.url)).await.unwrap();
    let count = "return document.querySelectorAll('.inst').length;";
    while client.execute(count, vec![]).await.unwrap() != N {
        assert!(opened.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("first paint of {N} instances: {:?}", opened.elapsed());

    // Records appended one after another; each must show in the page within 1 s.
    let mut worst = Duration::ZERO;
    let mut total = Duration::ZERO;
    let samples = 20;
    for k in 0..samples {
        let name = instance(k * 37 % N);
        let appended = Instant::now();
        journal
            .append(Event::InstanceChanged {
                rollout: id.into(),
                instance: name.clone(),
                version: "2".into(),
                ok: true,
                detail: String::new(),
            })
            .unwrap();
        let shown =
            format!("return document.querySelector('[data-instance=\"{name}\"]').dataset.version;");
        while client.execute(&shown, vec![]).await.unwrap() != "2" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = appended.elapsed();
        worst = worst.max(took);
        total += took;
    }
    let render = client
        .execute(
            "const t = performance.now(); render(last); return performance.now() - t;",
            vec![],
        )
        .await
        .unwrap();
    println!(
        "append -> shown in the page, {samples} records: mean {:?}, worst {worst:?}; one full render of {N} instances: {render} ms",
        total / samples as u32
    );
    assert!(worst < Duration::from_secs(1), "worst {worst:?}");
    client.close().await.unwrap();
}
