//! DataComp's evaluation directory (`download_evalsets.py`'s layout): per task, `wds_<task>_test/` with its
//! `classnames.txt` and `zeroshot_classification_templates.txt` — where the official FLYT code reads each
//! downstream task's class names and prompt templates.

use std::path::{Path, PathBuf};

/// The task names the official FLYT code knows (`--downstream_task_names`), with their DataComp directories.
pub const DATACOMP_TASKS: [(&str, &str); 22] = [
    ("imagenet", "wds_imagenet1k_test"),
    ("mnist", "wds_mnist_test"),
    ("svhn", "wds_vtab-svhn_test"),
    ("cifar10", "wds_cifar10_test"),
    ("cifar100", "wds_vtab-cifar100_test"),
    ("food101", "wds_food101_test"),
    ("flowers102", "wds_vtab-flowers_test"),
    ("pet", "wds_vtab-pets_test"),
    ("iwildcam", "wds_wilds-iwildcam_test"),
    ("sun397", "wds_sun397_test"),
    ("eurosat", "wds_vtab-eurosat_test"),
    ("cars", "wds_cars_test"),
    ("dtd", "wds_vtab-dtd_test"),
    ("resisc45", "wds_vtab-resisc45_test"),
    ("gtsrb", "wds_gtsrb_test"),
    ("aircraft", "wds_fgvc_aircraft_test"),
    ("voc", "wds_voc2007_test"),
    ("country", "wds_country211_test"),
    ("rendered_sst2", "wds_renderedsst2_test"),
    ("fmow", "wds_wilds-fmow_test"),
    ("dollar_street", "wds_dollar_street_test"),
    ("stl10", "wds_stl10_test"),
];

/// A DataComp task's `classnames.txt` and `zeroshot_classification_templates.txt` under the evaluation
/// directory `eval_dir`, if the task is one the official code knows.
///
/// ```
/// let (c, t) = flyt::datacomp_task_files("dc-eval".as_ref(), "imagenet").unwrap();
/// assert!(c.ends_with("wds_imagenet1k_test/classnames.txt"));
/// assert!(t.ends_with("wds_imagenet1k_test/zeroshot_classification_templates.txt"));
/// assert!(flyt::datacomp_task_files("dc-eval".as_ref(), "fashion-mnist").is_none());
/// ```
pub fn datacomp_task_files(eval_dir: &Path, task: &str) -> Option<(PathBuf, PathBuf)> {
    let (_, dir) = DATACOMP_TASKS.iter().find(|(t, _)| *t == task)?;
    let d = eval_dir.join(dir);
    Some((d.join("classnames.txt"), d.join("zeroshot_classification_templates.txt")))
}
