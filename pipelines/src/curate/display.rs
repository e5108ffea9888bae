//! The live status of a curation run: a status line on a terminal, `tracing` log lines otherwise.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flyt_operators::Counters;

/// Starts the display thread; it ends once `counters.finished` is set.
pub(super) fn spawn(counters: Arc<Counters>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::IsTerminal;
        let tty = std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} curate {msg} ({elapsed})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            b
        });
        let mut last_log = Instant::now();
        let mut last_tick = Instant::now();
        while !counters.finished.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            counters.tick(last_tick.elapsed());
            last_tick = Instant::now();
            if let Some(b) = &bar {
                b.set_message(counters.line());
                b.tick();
            } else if last_log.elapsed() >= Duration::from_secs(10) {
                tracing::info!("{}", counters.line());
                last_log = Instant::now();
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    })
}
