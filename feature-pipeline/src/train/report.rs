//! A training's report: the loss curve (PNG), every step's record (JSON) and a markdown summary,
//! stored with the model version's lineage.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::trainer::StepRecord;

/// Writes `loss.png`, `steps.json` and `README.md` into the new directory `dir`.
pub fn write(dir: &Path, records: &[StepRecord], summary: &Value, metrics: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let loss: Vec<(f64, f64)> = records.iter().map(|r| (r.step as f64, r.loss)).collect();
    // A running mean over 10 steps shows the trend through batch-to-batch noise.
    let smooth: Vec<(f64, f64)> = (0..records.len())
        .map(|i| {
            let window = &records[i.saturating_sub(9)..=i];
            (
                records[i].step as f64,
                window.iter().map(|r| r.loss).sum::<f64>() / window.len() as f64,
            )
        })
        .collect();
    crate::report::line_chart(
        &dir.join("loss.png"),
        "Training loss",
        "optimizer step",
        "cross-entropy per answer token",
        &[("loss", loss), ("mean of 10 steps", smooth)],
    )?;
    std::fs::write(dir.join("steps.json"), serde_json::to_string_pretty(records)? + "\n")?;
    let mut text =
        String::from("# Training report\n\n![loss](loss.png)\n\n| metric | base | fine-tuned |\n|---|---:|---:|\n");
    for key in ["validation_loss", "test_loss"] {
        let show = |v: &Value| v.as_f64().map_or("-".to_string(), |v| format!("{v:.4}"));
        let _ = writeln!(
            text,
            "| {} | {} | {} |",
            key.replace('_', " "),
            show(&metrics[format!("base_{key}")]),
            show(&metrics[key])
        );
    }
    let _ = write!(
        text,
        "\n## Run\n\n```json\n{}\n```\n",
        serde_json::to_string_pretty(summary)?
    );
    std::fs::write(dir.join("README.md"), text)?;
    Ok(())
}
