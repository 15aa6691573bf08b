//! Formats the engine runs through another, losslessly, at load:
//! - Q4_0 and Q5_0 become Q8_0 blocks: the same scale `d` and the same integers
//!   (`q − 8`, `q − 16`, both within an i8), so the dot product against Q8_0 activations
//!   is the formats' own (`d_w · d_a · Σ q_w q_a`) on the Q8_0 kernels. Memory grows to
//!   34 bytes per 32 values (from 18 and 22).
//! - Q5_1 (`d · q + m`) becomes the same: its scale and its integers `q` (0..=31) as
//!   Q8_0 blocks with exact block sums, with each block's `m` kept beside them
//!   ([`q5_1_split`]); the matmul adds `Σ m · s_a`. 38 bytes per 32 values (from 24).
//!
//! F16 and BF16 are not widened: [`super::QMatrix::Half`] keeps them as stored.

use half::f16;

/// A conversion of a tensor's stored bytes into the bytes of the format it runs as.
pub type Widen = fn(&[u8]) -> Vec<u8>;

fn f16_at(b: &[u8], at: usize) -> f16 {
    f16::from_le_bytes([b[at], b[at + 1]])
}

/// Q8_0 bytes (34 per block) from Q4_0 bytes (18 per block).
pub fn q4_0_to_q8_0(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() / 18 * 34);
    for b in raw.chunks_exact(18) {
        out.extend_from_slice(&b[0..2]);
        let qs = &b[2..18];
        out.extend(qs.iter().map(|&q| ((q & 0x0f) as i8 - 8) as u8));
        out.extend(qs.iter().map(|&q| ((q >> 4) as i8 - 8) as u8));
    }
    out
}

/// The 5-bit values of a Q5_0/Q5_1 block (`qh` and `qs` as stored), unsigned.
fn five_bit(qh: u32, qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0f) | ((((qh >> j) << 4) & 0x10) as u8);
        q[j + 16] = (qs[j] >> 4) | (((qh >> (j + 12)) & 0x10) as u8);
    }
    q
}

/// Q8_0 bytes (34 per block) from Q5_0 bytes (22 per block).
pub fn q5_0_to_q8_0(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() / 22 * 34);
    for b in raw.chunks_exact(22) {
        out.extend_from_slice(&b[0..2]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        out.extend(
            five_bit(qh, &b[6..22])
                .iter()
                .map(|&q| (q as i8 - 16) as u8),
        );
    }
    out
}

/// Q8_0 bytes (34 per block: `d`, then `q` in 0..=31) and the blocks' minima `m` as
/// f32, from Q5_1 bytes (24 per block).
pub fn q5_1_split(raw: &[u8]) -> (Vec<u8>, Vec<f32>) {
    let blocks = raw.len() / 24;
    let (mut q8, mut minima) = (Vec::with_capacity(blocks * 34), Vec::with_capacity(blocks));
    for b in raw.chunks_exact(24) {
        q8.extend_from_slice(&b[0..2]);
        minima.push(f16_at(b, 2).to_f32());
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        q8.extend_from_slice(&five_bit(qh, &b[8..24]));
    }
    (q8, minima)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::kquants::{KMatrix, KType};
    use crate::quant::{Half, QMatrix, WeightFormat};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// `values` quantised to `dtype` by candle: its bytes and its own dequantisation, the
    /// independent reading every conversion here must equal exactly.
    fn candle(dtype: GgmlDType, rows: usize, cols: usize, values: &[f32]) -> (Vec<u8>, Vec<f32>) {
        let t = Tensor::from_slice(values, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let bytes = q.data().unwrap().to_vec();
        let back = q.dequantize(&Device::Cpu).unwrap();
        (bytes, back.flatten_all().unwrap().to_vec1::<f32>().unwrap())
    }

    fn rows_of(m: &QMatrix) -> Vec<f32> {
        let mut all = vec![0.0; m.rows() * m.cols()];
        for (r, out) in all.chunks_exact_mut(m.cols()).enumerate() {
            m.dequantize_row(r, out);
        }
        all
    }

    #[test]
    fn every_widened_and_k_format_reads_as_candle_dequantises_it() {
        let (rows, cols) = (6, 512);
        let values = crate::quant::test_values(5, rows * cols, 3.0);
        let cases: [(GgmlDType, Widen, WeightFormat); 2] = [
            (GgmlDType::Q4_0, q4_0_to_q8_0, WeightFormat::Q8_0),
            (GgmlDType::Q5_0, q5_0_to_q8_0, WeightFormat::Q8_0),
        ];
        for (dtype, widen, format) in cases {
            let (bytes, want) = candle(dtype, rows, cols, &values);
            let m = QMatrix::from_bytes(format, rows, cols, &widen(&bytes)).unwrap();
            assert_eq!(rows_of(&m), want, "{dtype:?}");
        }
        let (bytes, want) = candle(GgmlDType::Q5_1, rows, cols, &values);
        assert_eq!(
            rows_of(&QMatrix::q5_1(rows, cols, &bytes).unwrap()),
            want,
            "Q5_1"
        );
        for (dtype, half) in [(GgmlDType::F16, Half::F16), (GgmlDType::BF16, Half::Bf16)] {
            let (bytes, want) = candle(dtype, rows, cols, &values);
            let m = QMatrix::from_bytes(WeightFormat::Half(half), rows, cols, &bytes).unwrap();
            assert_eq!(rows_of(&m), want, "{dtype:?}");
        }
        for (dtype, kind) in [
            (GgmlDType::Q4K, KType::Q4K),
            (GgmlDType::Q5K, KType::Q5K),
            (GgmlDType::Q6K, KType::Q6K),
        ] {
            let (bytes, want) = candle(dtype, rows, cols, &values);
            let m = QMatrix::K(KMatrix::from_bytes(kind, rows, cols, &bytes));
            let got = rows_of(&m);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{dtype:?}");
        }
    }
}
