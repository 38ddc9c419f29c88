//! Generates images with a score machine from a real training set, and
//! shows how creative they are: each sample beside its nearest training
//! image, with the distance between them.
//!
//! ```text
//! cargo run --release --example generate
//! cargo run --release --example generate -- --mnist ../shared/data/mnist --machine els --samples 8
//! ```
//!
//! Without `--mnist` it uses the 1,797 UCI handwritten digits (8x8, embedded
//! in the `smartcore` crate), so it needs no file. `--help` lists the options.

use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use score_machines::io::idx;
use score_machines::io::png::{GridOptions, write_grid};
use score_machines::prelude::*;
use score_machines::sampler::{Method, Sampler, StepRecord, initial_noise};

const USAGE: &str = "\
usage: generate [options]

  --mnist DIR        train on IDX files in DIR (MNIST or Fashion-MNIST);
                     default: the embedded 8x8 UCI digits
  --rows A..B        training rows of the IDX files (default 0..5000)
  --machine M        is | ls | els | bbels (default bbels: ELS with
                     zero-padded windows)
  --scales K,K,...   one odd patch side per step, low noise first
  --k K              one patch side for every step (instead of --scales)
  --steps N          sampler steps (default 20)
  --sampler S        ddim | ddpm | euler | heun (default ddim)
  --seed N           seed of the initial noise (default 0)
  --samples N        number of samples (default 16)
  --class C          sample from the images of class C only
  --copy-below D     RMS pixel distance under which a sample counts as a
                     copy of its nearest training image (default 0.1)
  --out FILE.png     output grid (default generated.png)
  --help             this text";

/// Scale schedule for 28x28 images: the one published for a zero-padded
/// MNIST ResNet, entry j for the step at t = (j + 1) / 20.
const SCALES_28: [usize; 20] = [
    3, 3, 5, 5, 5, 7, 7, 7, 9, 9, 11, 11, 11, 11, 13, 15, 15, 15, 15, 15,
];

/// Scale schedule for 8x8 images: 3x3 patches at low noise, growing to
/// 7x7 (the largest patch with interior candidates) at high noise.
const SCALES_8: [usize; 20] = [3, 3, 3, 3, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 7, 7, 7, 7, 7, 7];

#[derive(Debug)]
struct Options {
    mnist: Option<PathBuf>,
    rows: Range<usize>,
    machine: String,
    scales: Option<Vec<usize>>,
    k: Option<usize>,
    steps: usize,
    sampler: String,
    seed: u64,
    samples: usize,
    class: Option<usize>,
    copy_below: f64,
    out: PathBuf,
}

fn parse_rows(text: &str) -> Result<Range<usize>, String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("--rows expects A..B, got {text:?}"))?;
    let start = a.parse().map_err(|_| format!("--rows: bad start {a:?}"))?;
    let end = b.parse().map_err(|_| format!("--rows: bad end {b:?}"))?;
    if end <= start {
        return Err(format!("--rows {text} is empty"));
    }
    Ok(start..end)
}

fn parse_number<N: std::str::FromStr>(flag: &str, text: &str) -> Result<N, String> {
    text.parse()
        .map_err(|_| format!("{flag} expects a number, got {text:?}"))
}

fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut options = Options {
        mnist: None,
        rows: 0..5000,
        machine: "bbels".into(),
        scales: None,
        k: None,
        steps: 20,
        sampler: "ddim".into(),
        seed: 0,
        samples: 16,
        class: None,
        copy_below: 0.1,
        out: PathBuf::from("generated.png"),
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value (see --help)"))?;
        match flag.as_str() {
            "--mnist" => options.mnist = Some(PathBuf::from(value)),
            "--rows" => options.rows = parse_rows(value)?,
            "--machine" => options.machine = value.clone(),
            "--scales" => {
                let sides = value
                    .split(',')
                    .map(|s| parse_number("--scales", s.trim()))
                    .collect::<Result<Vec<usize>, String>>()?;
                options.scales = Some(sides);
            }
            "--k" => options.k = Some(parse_number("--k", value)?),
            "--steps" => options.steps = parse_number("--steps", value)?,
            "--sampler" => options.sampler = value.clone(),
            "--seed" => options.seed = parse_number("--seed", value)?,
            "--samples" => options.samples = parse_number("--samples", value)?,
            "--class" => options.class = Some(parse_number("--class", value)?),
            "--copy-below" => options.copy_below = parse_number("--copy-below", value)?,
            "--out" => options.out = PathBuf::from(value),
            other => return Err(format!("unknown option {other} (see --help)")),
        }
    }
    if options.samples == 0 {
        return Err("--samples must be at least 1".into());
    }
    if options.steps == 0 {
        return Err("--steps must be at least 1".into());
    }
    if options.scales.is_some() && options.k.is_some() {
        return Err("give either --scales or --k, not both".into());
    }
    Ok(Some(options))
}

/// The 1,797 UCI digits from `smartcore`: 64 values in 0..16 per row,
/// mapped to [-1, 1] as `v / 16 * 2 - 1`.
fn embedded_digits() -> Result<TrainingSet<f32>, Error> {
    let dataset = smartcore::dataset::digits::load_dataset();
    let shape = Shape::new(1, 8, 8)?;
    let data = dataset.data.iter().map(|&v| v / 16.0 * 2.0 - 1.0).collect();
    let labels = dataset.target.iter().map(|&c| c as usize).collect();
    TrainingSet::new(shape, data, Some(labels))
}

fn sampler_method(name: &str, seed: u64) -> Result<Method, String> {
    match name {
        "ddim" => Ok(Method::Ddim),
        "ddpm" => Ok(Method::Ddpm { seed }),
        "euler" => Ok(Method::Euler),
        "heun" => Ok(Method::Heun),
        other => Err(format!(
            "unknown sampler {other:?} (ddim, ddpm, euler or heun)"
        )),
    }
}

fn run(options: Options) -> Result<(), String> {
    let training: TrainingSet<f32> = match &options.mnist {
        Some(dir) => idx::read_mnist_rows(dir, options.rows.clone()).map_err(|e| e.to_string())?,
        None => embedded_digits().map_err(|e| e.to_string())?,
    };
    let shape = training.shape();
    if let Some(class) = options.class {
        training.class(class).map_err(|e| e.to_string())?;
    }

    let scales = match (&options.scales, options.k) {
        (Some(sides), _) => sides.clone(),
        (None, Some(k)) => vec![k; options.steps],
        (None, None) => {
            let base: &[usize] = if shape.height.max(shape.width) >= 24 {
                &SCALES_28
            } else {
                &SCALES_8
            };
            if options.steps == base.len() {
                base.to_vec()
            } else {
                // Stretch the default over another number of steps.
                (0..options.steps)
                    .map(|j| base[j * base.len() / options.steps])
                    .collect()
            }
        }
    };
    if scales.len() != options.steps {
        return Err(format!(
            "the scale schedule has {} entries but there are {} steps",
            scales.len(),
            options.steps
        ));
    }
    let locality = ScaleSchedule::new(scales.clone()).map_err(|e| e.to_string())?;
    let method = sampler_method(&options.sampler, options.seed)?;
    let sampler = Sampler::new(method, options.steps).map_err(|e| e.to_string())?;

    let score: Box<dyn ScoreFunction<f32>> = match options.machine.as_str() {
        "is" => {
            Box::new(Machine::ideal(training.clone(), LegacyCosine).map_err(|e| e.to_string())?)
        }
        "ls" => Box::new(
            Machine::local(training.clone(), LegacyCosine, locality).map_err(|e| e.to_string())?,
        ),
        "els" => Box::new(
            Machine::equivariant_local(training.clone(), LegacyCosine, locality)
                .map_err(|e| e.to_string())?,
        ),
        "bbels" => Box::new(
            Machine::equivariant_local_zero_padded(training.clone(), LegacyCosine, locality)
                .map_err(|e| e.to_string())?,
        ),
        other => return Err(format!("unknown machine {other:?} (is, ls, els or bbels)")),
    };

    let source = match &options.mnist {
        Some(dir) => format!(
            "{} rows {}..{}",
            dir.display(),
            options.rows.start,
            options.rows.end
        ),
        None => "embedded UCI digits".to_string(),
    };
    println!(
        "{} training images {shape} from {source}; machine {}, {} {} steps, scales {:?}",
        training.len(),
        options.machine,
        options.steps,
        options.sampler,
        if options.machine == "is" {
            Vec::new()
        } else {
            scales
        },
    );

    let total = (options.samples * sampler.evaluations()) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} evaluations, {elapsed} elapsed, eta {eta}",
        )
        .expect("valid template"),
    );
    let started = Instant::now();
    let mut samples = Vec::with_capacity(options.samples);
    for index in 0..options.samples {
        let noise = initial_noise::<f32>(shape, options.seed.wrapping_add(index as u64));
        let mut tick = |_: &StepRecord<'_, f32>| bar.inc(1);
        let sample = sampler
            .sample(score.as_ref(), noise, options.class, &mut tick)
            .map_err(|e| e.to_string())?;
        samples.push(sample);
    }
    bar.finish_and_clear();
    println!("sampled in {:.1} s", started.elapsed().as_secs_f64());

    let mut grid = Vec::with_capacity(2 * samples.len());
    let mut copies = 0;
    println!("sample  nearest row  L2 distance  RMS pixel distance");
    for (index, sample) in samples.iter().enumerate() {
        let (row, squared) = training.nearest(sample).map_err(|e| e.to_string())?;
        let rms = (squared / shape.len() as f64).sqrt();
        let verdict = if rms < options.copy_below {
            copies += 1;
            "copy"
        } else {
            "novel"
        };
        println!(
            "{index:>6}  {row:>11}  {:>11.4}  {rms:>18.4}  {verdict}",
            squared.sqrt()
        );
        grid.push(sample.clone());
        grid.push(training.to_image(row));
    }
    println!(
        "copies: {copies} of {} (RMS distance to the nearest training image below {}); novel: {}",
        samples.len(),
        options.copy_below,
        samples.len() - copies
    );

    let grid_options = GridOptions {
        columns: Some(8),
        scale: if shape.height <= 16 { 6 } else { 3 },
        padding: 2,
        ..GridOptions::default()
    };
    write_grid(&options.out, &grid, &grid_options).map_err(|e| e.to_string())?;
    println!(
        "wrote {} (pairs: sample, then its nearest training image)",
        options.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    match run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
