//! `ReadScoreFiles`: external per-uid score files in, `(uid, ExternalScore)` updates out (only the columns
//! the mix uses). A bad file (a bad uid, a NaN, a repeated uid) is reported whole and changes nothing.

use flyt::Uid;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;

use crate::{ExternalScore, Job, SinkEvent};

/// External score updates.
pub type ExternalUpdate = ((Uid, ExternalScore), u64, isize);

#[derive(Clone, Debug)]
enum Out {
    Update(ExternalUpdate),
    Sink(SinkEvent),
}

/// Reads [`Job::Scores`] files (other jobs are ignored) for the `wanted` columns; returns (updates, events for
/// [`crate::PublishSubset`]: what each file gave, or why it was refused).
pub trait ReadScoreFiles<'scope> {
    /// Reads.
    fn read_score_files(
        self,
        wanted: Vec<String>,
    ) -> (Stream<'scope, u64, Vec<ExternalUpdate>>, Stream<'scope, u64, Vec<SinkEvent>>);
}

impl<'scope> ReadScoreFiles<'scope> for Stream<'scope, u64, Vec<Job>> {
    fn read_score_files(
        self,
        wanted: Vec<String>,
    ) -> (Stream<'scope, u64, Vec<ExternalUpdate>>, Stream<'scope, u64, Vec<SinkEvent>>) {
        let out = self.unary::<CapacityContainerBuilder<Vec<Out>>, _, _, _>(Pipeline, "ReadScoreFiles", move |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let Some(t) = cap.least().copied() else { return };
                    let mut session = output.session(&cap);
                    for j in data.drain(..) {
                        let Job::Scores { path } = j else { continue };
                        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        let mut found = Vec::new();
                        let mut updates = Vec::new();
                        let mut error = None;
                        for col in &wanted {
                            match flyt::read_scores_parquet(&path, col) {
                                Ok(pairs) => {
                                    found.push(col.clone());
                                    for (uid, v) in pairs {
                                        let e = ExternalScore {
                                            column: col.clone(),
                                            file: file.clone(),
                                            value: v.to_bits(),
                                        };
                                        updates.push(((uid, e), t, 1));
                                    }
                                }
                                Err(flyt::Error::Format { what, .. }) if what == *col => {} // not in this file
                                Err(e) => {
                                    error = Some(e.to_string());
                                    break;
                                }
                            }
                        }
                        if error.is_none() && found.is_empty() {
                            error = Some(format!(
                                "none of the mix's external columns ({}) is in this file",
                                wanted.join(", ")
                            ));
                        }
                        let rows = if error.is_none() { updates.len() as u64 } else { 0 };
                        if let Some(e) = &error {
                            tracing::warn!(file = %path.display(), error = %e, "score file not used");
                        } else {
                            for u in updates {
                                session.give(Out::Update(u));
                            }
                        }
                        session.give(Out::Sink(SinkEvent::External {
                            file: path,
                            values: rows,
                            columns: found,
                            error,
                        }));
                    }
                });
            }
        });
        out.ok_err::<Vec<ExternalUpdate>, ExternalUpdate, Vec<SinkEvent>, SinkEvent, _>(|o| match o {
            Out::Update(u) => Ok(u),
            Out::Sink(s) => Err(s),
        })
    }
}
