//! `banditd-loadgen`: the load generator and regret benchmark of banditd (issue 3).
//!
//! Subcommands:
//! - `grpc`: drives a running banditd over gRPC with rounds of a simulated environment
//!   (closed loop with N workers over M connections, or open loop at a target rate), sends
//!   each decision's true regret with its reward, and reports regret, throughput, latency
//!   percentiles and errors; `--baseline` runs the same load against a no-op server first.
//! - `inproc`: plays environments against the library's policy and learner directly,
//!   without gRPC, for several seeds, and prints normalized regret mean ± std per
//!   environment.
//! - `dump`: writes an environment's rounds as JSON lines, so other tools (the peer
//!   comparison under `bench/peers/`) play exactly the same rounds.
//! - `plot`: draws the regret curves of saved `--json` reports into one SVG.
//! - `admin`: the admin calls (create, update, delete a model, list its checkpoints, roll
//!   it back, show it with its holdout lift), so that a model made at runtime can be driven
//!   with `grpc --model NAME`.

mod admin;
mod backoff;
mod cli;
mod connect;
mod driver;
mod plot;
mod report;
mod server_cpu;

use std::{
    fs::File,
    io::{BufWriter, Write},
    process::ExitCode,
    time::Instant,
};

use anyhow::{Context, bail};
use banditd::{
    config::{Config, ModelConfig},
    harness::{self, mean_std, mix_seed, model_for_env},
    sim,
};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use cli::{Cli, Command, DumpArgs, InprocArgs, PlotArgs};
use report::{InprocReport, InprocRunReport, InprocSummary};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // candle asks rayon for its thread count on every matmul and, with RAYON_NUM_THREADS
    // unset, re-reads /proc/cpuinfo each time; the in-process mode is single-threaded
    // anyway. Set before any thread exists.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: no other thread has been started yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Grpc(args) => driver::main(args),
        Command::Inproc(args) => inproc(&args),
        Command::Dump(args) => dump(&args),
        Command::Plot(args) => plot_reports(&args),
        Command::Admin(args) => admin::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, without a backtrace (these are user errors), each
/// cause only once: several error types repeat their source in their own message.
fn one_line(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    message
}

/// The base model of `--model-config` / `--model`, if given.
fn base_model(args: &InprocArgs) -> anyhow::Result<Option<ModelConfig>> {
    let Some(path) = &args.model_config else {
        return Ok(None);
    };
    let config = Config::from_file(path)?;
    let names = || {
        config
            .models
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let model = match &args.model {
        Some(name) => config
            .models
            .iter()
            .find(|m| &m.name == name)
            .with_context(|| {
                format!(
                    "{} has no model {name:?}; its models: {}",
                    path.display(),
                    names()
                )
            })?,
        None if config.models.len() == 1 => &config.models[0],
        None => bail!(
            "{} has several models ({}); choose one with --model",
            path.display(),
            names()
        ),
    };
    Ok(Some(model.clone()))
}

/// A progress bar on stderr (hidden when stderr is not a terminal or with `--quiet`).
pub(crate) fn progress_bar(len: u64, quiet: bool, template: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// `inproc`: every environment × seed, sequentially, then mean ± std per environment.
fn inproc(args: &InprocArgs) -> anyhow::Result<()> {
    if args.seeds.is_empty() {
        bail!("--seeds: give at least one seed");
    }
    if let Some(path) = &args.output.plot {
        plot::check_path(path)?;
    }
    let base = base_model(args)?;
    // Build every environment once up front so a bad spec fails before any work.
    for spec in &args.envs {
        let env = sim::from_spec(spec, args.seeds[0])?;
        model_for_env(&*env, base.as_ref())?.with_settings(&args.settings)?;
    }
    let total = args.envs.len() as u64 * args.seeds.len() as u64 * args.rounds;
    let bar = progress_bar(
        total,
        args.output.quiet,
        "{msg:32} [{bar:30}] {pos}/{len} rounds, {elapsed} (eta {eta})",
    );
    let mut runs = Vec::new();
    let mut summary = Vec::new();
    let mut done = 0u64;
    for spec in &args.envs {
        let mut normalized = Vec::new();
        let mut regrets = Vec::new();
        let mut rewards = Vec::new();
        let mut name = String::new();
        for &seed in &args.seeds {
            let mut env = sim::from_spec(spec, seed)?;
            let mut model = model_for_env(&*env, base.as_ref())?.with_settings(&args.settings)?;
            model.seed = mix_seed(model.seed, seed);
            name = env.name();
            bar.set_message(format!("{name} seed {seed}"));
            let run = harness::run_inproc(&mut *env, &model, args.rounds, |played| {
                bar.set_position(done + played);
            })
            .with_context(|| format!("{name}, seed {seed}"))?;
            done += args.rounds;
            normalized.push(run.tally.normalized_regret());
            regrets.push(run.tally.regret);
            rewards.push(run.tally.mean_reward());
            runs.push(InprocRunReport::new(spec, seed, &model, &run));
        }
        let (nm, ns) = mean_std(&normalized);
        let (rm, rs) = mean_std(&regrets);
        let (wm, ws) = mean_std(&rewards);
        summary.push(InprocSummary {
            env: name,
            spec: spec.clone(),
            runs: args.seeds.len(),
            normalized_regret_mean: nm,
            normalized_regret_std: ns,
            regret_mean: rm,
            regret_std: rs,
            mean_reward_mean: wm,
            mean_reward_std: ws,
        });
    }
    bar.finish_and_clear();
    let report = InprocReport {
        mode: "inproc",
        label: args.output.label.clone(),
        rounds: args.rounds,
        seeds: args.seeds.clone(),
        model_config: args.model_config.as_ref().map(|p| p.display().to_string()),
        settings: args.settings.clone(),
        runs,
        summary,
    };
    if let Some(path) = &args.output.plot {
        let series: Vec<plot::Series> = report
            .runs
            .iter()
            .map(|r| plot::Series {
                name: format!("{} seed {}", r.env, r.seed),
                curve: r.curve.clone(),
            })
            .collect();
        plot::draw(path, "in-process", &series, args.output.plot_y)?;
    }
    if args.output.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print_table();
        if let Some(path) = &args.output.plot {
            println!("plot: {}", path.display());
        }
    }
    Ok(())
}

/// `dump`: a header line, then one JSON object per round.
fn dump(args: &DumpArgs) -> anyhow::Result<()> {
    let mut env = sim::from_spec(&args.env, args.seed)?;
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(out);
    let header = serde_json::json!({
        "env": env.name(),
        "spec": args.env,
        "seed": args.seed,
        "rounds": args.rounds,
        "context_dim": env.context_dim(),
        "arm_feature_dim": env.arm_feature_dim(),
        "arm_ids": env.arm_ids(),
    });
    writeln!(out, "{header}")?;
    for t in 0..args.rounds {
        let round = env.next_round();
        let candidates: Vec<_> = round
            .candidates
            .iter()
            .map(|c| serde_json::json!({"id": c.id, "features": c.features}))
            .collect();
        let line = serde_json::json!({
            "t": t,
            "context": round.context,
            "candidates": candidates,
            "expected": round.expected,
            "rewards": round.rewards,
        });
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

/// `plot`: the curves of saved reports (grpc or inproc `--json` output), one line per run.
fn plot_reports(args: &PlotArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    plot::check_path(&args.output)?;
    let mut series = Vec::new();
    for path in &args.reports {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON report", path.display()))?;
        let found = report::curves_of(&value, &path.display().to_string())
            .with_context(|| format!("{}: no regret curve found", path.display()))?;
        series.extend(found);
    }
    if series.is_empty() {
        bail!("no reports given");
    }
    plot::draw(&args.output, &args.title, &series, args.plot_y)?;
    eprintln!(
        "wrote {} ({} lines) in {:.1?}",
        args.output.display(),
        series.len(),
        started.elapsed()
    );
    Ok(())
}
