use super::*;
use crate::schedule::{LegacyCosine, VarianceExploding};

fn one_pixel(value: f64) -> Image<f64> {
    Image::from_vec(Shape::new(1, 1, 1).unwrap(), vec![value]).unwrap()
}

fn buffers_with(x0_hat: f64, eps_hat: f64) -> Buffers<f64> {
    let mut buffers = Buffers::new(Shape::new(1, 1, 1).unwrap());
    buffers.x0_hat.as_mut_slice()[0] = x0_hat;
    buffers.eps_hat.as_mut_slice()[0] = eps_hat;
    buffers
}

/// The DDIM update as the sampler computes it (`a' x0hat + s' epshat`),
/// the general `(a, s)` form `(a'/a) x + (s' - (a'/a) s) epshat`, and the
/// reference `abar` form agree to 1e-12 for the legacy cosine schedule, from
/// either native prediction.
#[test]
fn ddim_forms_agree_for_legacy_cosine() {
    let schedule = LegacyCosine;
    let n = 20;
    for i in (1..=n).rev() {
        let (t, t_next) = (i as f64 / n as f64, (i - 1) as f64 / n as f64);
        let here = Scales::evaluated_at(&schedule, t).unwrap();
        let next = Scales::at(&schedule, t_next).unwrap();
        for (x, eps) in [(1.3, -0.4), (-2.0, 0.9), (0.05, 1.7)] {
            let (a, s, a_next, s_next) = (here.signal, here.noise, next.signal, next.noise);
            let ratio = a_next / a;
            let general = ratio * x + (s_next - ratio * s) * eps;

            let (ab, abp) = (schedule.alpha_bar(t), schedule.alpha_bar(t_next));
            let reference = (abp / ab).sqrt() * x
                + ((1.0 - abp).sqrt() - (abp / ab).sqrt() * (1.0 - ab).sqrt()) * eps;

            let x0 = (x - s * eps) / a;
            let mut from_noise = one_pixel(x);
            assert!(ddim_update(
                &mut from_noise,
                Native::Noise,
                &here,
                &next,
                &buffers_with(f64::NAN, eps)
            ));
            let mut from_clean = one_pixel(x);
            assert!(ddim_update(
                &mut from_clean,
                Native::CleanImage,
                &here,
                &next,
                &buffers_with(x0, f64::NAN)
            ));

            let scale = 1.0 + general.abs();
            for value in [
                reference,
                from_noise.as_slice()[0],
                from_clean.as_slice()[0],
            ] {
                assert!(
                    (value - general).abs() <= 1e-12 * scale,
                    "t = {t}: {value} against {general}"
                );
            }
        }
    }
}

/// The DDPM step for a variance-preserving schedule is the textbook
/// posterior: `beta = 1 - abar_t / abar_p`, mean
/// `sqrt(abar_p) beta / (1 - abar_t) x0 + sqrt(1 - beta) (1 - abar_p) / (1 - abar_t) x_t`.
/// On the last step it adds no noise, so it is its mean exactly.
#[test]
fn ddpm_last_step_is_the_posterior_mean() {
    let schedule = LegacyCosine;
    let (t, t_next) = (0.3, 0.1);
    let here = Scales::evaluated_at(&schedule, t).unwrap();
    let next = Scales::at(&schedule, t_next).unwrap();
    let (ab, abp) = (schedule.alpha_bar(t), schedule.alpha_bar(t_next));
    let beta = 1.0 - ab / abp;
    let (x, x0) = (0.8, -0.25);
    let expected =
        abp.sqrt() * beta / (1.0 - ab) * x0 + (1.0 - beta).sqrt() * (1.0 - abp) / (1.0 - ab) * x;
    let mut state = one_pixel(x);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let buffers = buffers_with(x0, f64::NAN);
    assert!(ddpm_update(
        &mut state,
        Native::CleanImage,
        &here,
        &next,
        true,
        &mut rng,
        &buffers
    ));
    assert!((state.as_slice()[0] - expected).abs() < 1e-14);
}

/// With a variance-exploding schedule the DDPM step keeps `x` with weight
/// `s'^2 / s^2` and adds noise of variance `(s^2 - s'^2) s'^2 / s^2`.
#[test]
fn ddpm_step_for_variance_exploding() {
    let schedule = VarianceExploding::new(0.1, 10.0).unwrap();
    let here = Scales::evaluated_at(&schedule, 0.5).unwrap(); // s = 1
    let next = Scales::at(&schedule, 0.25).unwrap(); // s' = sqrt(0.1)
    let (x, x0) = (2.0, 0.5);
    let mut state = one_pixel(x);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let buffers = buffers_with(x0, f64::NAN);
    assert!(ddpm_update(
        &mut state,
        Native::CleanImage,
        &here,
        &next,
        false,
        &mut rng,
        &buffers
    ));
    let mut replay = ChaCha8Rng::seed_from_u64(9);
    let z: f64 = StandardNormal.sample(&mut replay);
    let expected = 0.1 * x + 0.9 * x0 + (0.9f64 * 0.1).sqrt() * z;
    assert!((state.as_slice()[0] - expected).abs() < 1e-12);
}

#[test]
fn times_are_exact_fractions() {
    let sampler = Sampler::new(Method::Euler, 3).unwrap();
    let times: Vec<_> = sampler.times().collect();
    assert_eq!(
        times,
        [(1.0, 2.0 / 3.0), (2.0 / 3.0, 1.0 / 3.0), (1.0 / 3.0, 0.0)]
    );
    assert_eq!(Sampler::new(Method::Ddim, 1).unwrap().times().len(), 1);
}

/// A second run with the same workspace and shape reuses its buffers.
#[test]
fn workspace_keeps_its_buffers() {
    let shape = Shape::new(1, 2, 3).unwrap();
    let score = crate::score::ClosureScore::new(
        LegacyCosine,
        Prediction::Noise,
        Some(shape),
        |x: &Image<f64>, _t: f64, _class: Option<usize>| Ok(x.clone()),
    );
    let sampler = Sampler::new(Method::Heun, 3).unwrap();
    let mut workspace = Workspace::with_shape(shape);
    let pointers = |w: &Workspace<f64>| {
        let b = w.buffers.as_ref().unwrap();
        (
            b.x0_hat.as_slice().as_ptr(),
            b.eps_hat.as_slice().as_ptr(),
            b.proposal.as_slice().as_ptr(),
            b.second.as_slice().as_ptr(),
            b.slope.as_ptr(),
        )
    };
    let before = pointers(&workspace);
    for seed in 0..2 {
        let mut x = initial_noise::<f64>(shape, seed);
        sampler
            .sample_into(&score, &mut x, None, &mut (), &mut workspace)
            .unwrap();
    }
    assert_eq!(pointers(&workspace), before);

    // Another shape takes new buffers of that shape.
    let other = Shape::new(1, 1, 4).unwrap();
    workspace.prepare(other);
    assert_eq!(workspace.buffers.as_ref().unwrap().slope.len(), 4);
}

fn ramp(shape: Shape) -> Image<f64> {
    let values = (0..shape.len())
        .map(|i| (i % 17) as f64 / 8.0 - 1.0)
        .collect();
    Image::from_vec(shape, values).unwrap()
}

/// The variance-preserving schedules of the crate, with typical settings.
fn variance_preserving() -> Vec<Box<dyn NoiseSchedule>> {
    use crate::schedule::{Cosine, Exponential, LinearBeta};
    vec![
        Box::new(LegacyCosine),
        Box::new(Cosine::new(0.008).unwrap()),
        Box::new(LinearBeta::new(1000, 1e-4, 0.02).unwrap()),
        Box::new(Exponential::new(4.0).unwrap()),
    ]
}

/// Every pixel is `a(t) x + s(t) eta` with the noise of `initial_noise`,
/// in `f64` exactly and in `f32` as that value rounded once.
#[test]
fn noised_is_the_forward_process_with_the_seeded_noise() {
    let shape = Shape::new(2, 5, 3).unwrap();
    let clean = ramp(shape);
    let mut schedules = variance_preserving();
    schedules.push(Box::new(VarianceExploding::new(0.01, 5.0).unwrap()));
    for schedule in &schedules {
        let schedule = schedule.as_ref();
        for t in [0.0, 0.05, 0.5, 1.0] {
            for seed in [0, 9] {
                let (a, s) = (schedule.signal(t), schedule.noise(t));
                let eta = initial_noise::<f64>(shape, seed);
                let wide = noised(&clean, schedule, t, seed).unwrap();
                let narrow = noised(&clean.cast::<f32>(), schedule, t, seed).unwrap();
                for (i, &x) in clean.as_slice().iter().enumerate() {
                    let want = a * x + s * eta.as_slice()[i];
                    assert_eq!(wide.as_slice()[i], want, "{schedule:?} t={t} seed={seed}");
                    let want32 = (a * (x as f32) as f64 + s * eta.as_slice()[i]) as f32;
                    assert_eq!(narrow.as_slice()[i], want32, "{schedule:?} t={t}");
                }
            }
        }
    }
}

/// At `t = 0` the variance-preserving schedules have `a = 1`, `s = 0`, and
/// the clean image comes back unchanged; at `t = 1` of the legacy cosine
/// the image is almost all noise, with the noise's spread.
#[test]
fn noised_ends_are_the_clean_image_and_nearly_pure_noise() {
    let shape = Shape::new(1, 64, 64).unwrap();
    let clean = ramp(shape);
    for schedule in variance_preserving() {
        assert_eq!(
            noised(&clean, schedule.as_ref(), 0.0, 3).unwrap(),
            clean,
            "{schedule:?}"
        );
    }
    let noisy = noised(&Image::<f64>::zeros(shape), &LegacyCosine, 1.0, 3).unwrap();
    let n = shape.len() as f64;
    let mean = noisy.as_slice().iter().sum::<f64>() / n;
    let spread = (noisy
        .as_slice()
        .iter()
        .map(|v| (v - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    let s = LegacyCosine.noise(1.0);
    assert!(mean.abs() < 0.05, "{mean}");
    assert!((spread / s - 1.0).abs() < 0.05, "{spread} against {s}");
}
