//! One score evaluation of a 28x28 query against MNIST training sets, for
//! every machine and patch side, and one full 20-step DDIM sample.
//!
//! Throughput is in comparisons: training images x candidate centres x
//! query pixels (for IS, training images x pixels: one squared difference
//! each). Reads MNIST from `SCORE_MACHINES_DATA` (default `../shared/data`).
//!
//! Benchmark ids are `kernel/els/n=N/{f32,f64}/SIDE`, `is/n=N/whole`,
//! `{ls,els,bbels}/n=N/k/SIDE` and `sample/els/n=N/ddim-20`; the filter is a
//! regular expression, so anchor it:
//!
//! ```text
//! cargo bench --bench machines
//! cargo bench --bench machines -- '^els/n=5000/'
//! cargo bench --bench machines -- '^els/n=1000/k/15$'
//! cargo bench --bench machines -- '^sample/els/n=5000/'
//! ```

use std::path::PathBuf;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use score_machines::io::idx;
use score_machines::prelude::*;
use score_machines::sampler::{Method, Sampler, initial_noise};

const SIDES: [usize; 4] = [3, 7, 15, 27];
const SIZES: [usize; 2] = [1000, 5000];
/// The scale schedule published for a zero-padded MNIST ResNet.
const SCALES: [usize; 20] = [
    3, 3, 5, 5, 5, 7, 7, 7, 9, 9, 11, 11, 11, 11, 13, 15, 15, 15, 15, 15,
];

fn mnist_dir() -> PathBuf {
    let data = std::env::var_os("SCORE_MACHINES_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    data.join("mnist")
}

/// A held-out digit noised to `t = 0.5`.
fn query(t: f64) -> Image<f32> {
    let digit: Image<f32> = idx::read_mnist_rows(mnist_dir(), 9000..9001)
        .expect("MNIST test digits in SCORE_MACHINES_DATA")
        .to_image(0);
    let noise = initial_noise::<f32>(digit.shape(), 1);
    let (a, s) = (LegacyCosine.signal(t) as f32, LegacyCosine.noise(t) as f32);
    let pixels = digit
        .as_slice()
        .iter()
        .zip(noise.as_slice())
        .map(|(x, e)| a * x + s * e)
        .collect();
    Image::from_vec(digit.shape(), pixels).expect("same shape")
}

fn bench_machine<E: Equivariance + Clone>(
    c: &mut Criterion,
    name: &str,
    training: &TrainingSet<f32>,
    equivariance: E,
    x: &Image<f32>,
) {
    let t = 0.5;
    let mut group = c.benchmark_group(format!("{name}/n={}", training.len()));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500));
    for side in SIDES {
        let machine = Machine::new(
            training.clone(),
            LegacyCosine,
            SquarePatch::new(side).expect("odd side"),
            equivariance.clone(),
        )
        .expect("machine");
        let comparisons = machine.comparisons(t).expect("candidates exist");
        group.throughput(Throughput::Elements(comparisons as u64));
        let mut out = Image::zeros(x.shape());
        group.bench_with_input(BenchmarkId::new("k", side), &side, |b, _| {
            b.iter(|| {
                machine
                    .x0_hat_into(x, t, None, &mut out)
                    .expect("evaluation")
            })
        });
    }
    group.finish();
}

fn evaluations(c: &mut Criterion) {
    let x = query(0.5);
    for size in SIZES {
        let training: TrainingSet<f32> =
            idx::read_mnist_rows(mnist_dir(), 0..size).expect("MNIST test digits");

        let ideal = Machine::ideal(training.clone(), LegacyCosine).expect("machine");
        let mut group = c.benchmark_group(format!("is/n={size}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500));
        group.throughput(Throughput::Elements((size * x.shape().len()) as u64));
        let mut out = Image::zeros(x.shape());
        group.bench_function("whole", |b| {
            b.iter(|| {
                ideal
                    .x0_hat_into(&x, 0.5, None, &mut out)
                    .expect("evaluation")
            })
        });
        group.finish();

        bench_machine(c, "ls", &training, SameLocation, &x);
        bench_machine(c, "els", &training, PeriodicInterior, &x);
        bench_machine(c, "bbels", &training, ZeroPadded, &x);
    }
}

/// The `f32` lane kernel against the `f64` kernel on the same values, side
/// by side: ELS on 1,000 digits.
fn kernels(c: &mut Criterion) {
    let narrow: TrainingSet<f32> = idx::read_mnist_rows(mnist_dir(), 0..1000).expect("MNIST");
    let wide: TrainingSet<f64> = narrow.cast().expect("f32 values fit in f64");
    let x = query(0.5);
    let x_wide: Image<f64> = x.cast();
    let mut group = c.benchmark_group("kernel/els/n=1000");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500));
    for side in [3, 7] {
        let local = SquarePatch::new(side).expect("odd side");
        let fast = Machine::equivariant_local(narrow.clone(), LegacyCosine, local.clone())
            .expect("machine");
        let exact = Machine::equivariant_local(wide.clone(), LegacyCosine, local).expect("machine");
        group.throughput(Throughput::Elements(
            fast.comparisons(0.5).expect("count") as u64
        ));
        let mut out = Image::zeros(x.shape());
        group.bench_with_input(BenchmarkId::new("f32", side), &side, |b, _| {
            b.iter(|| {
                fast.x0_hat_into(&x, 0.5, None, &mut out)
                    .expect("evaluation")
            })
        });
        let mut out_wide = Image::zeros(x.shape());
        group.bench_with_input(BenchmarkId::new("f64", side), &side, |b, _| {
            b.iter(|| {
                exact
                    .x0_hat_into(&x_wide, 0.5, None, &mut out_wide)
                    .expect("evaluation")
            })
        });
    }
    group.finish();
}

fn sampling(c: &mut Criterion) {
    for size in SIZES {
        let training: TrainingSet<f32> = idx::read_mnist_rows(mnist_dir(), 0..size).expect("MNIST");
        let shape = training.shape();
        let scales = ScaleSchedule::new(SCALES.to_vec()).expect("odd sides");
        let machine = Machine::equivariant_local(training, LegacyCosine, scales).expect("machine");
        let sampler = Sampler::new(Method::Ddim, 20).expect("steps");
        let mut group = c.benchmark_group(format!("sample/els/n={size}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500));
        group.bench_function("ddim-20", |b| {
            b.iter(|| {
                sampler
                    .sample(&machine, initial_noise::<f32>(shape, 3), None, &mut ())
                    .expect("sample")
            })
        });
        group.finish();
    }
}

criterion_group!(benches, kernels, evaluations, sampling);
criterion_main!(benches);
