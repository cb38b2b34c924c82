//! A checked front to the `gemm` crate: the f32 matrix product the inference path's kernels use,
//! over strided views of slices.
//!
//! `gemm::gemm` takes raw pointers and strides. Every call here goes through [`product`], which
//! checks, in release builds too, that each view's last element lies inside its slice and that the
//! destination does not overlap an input, so the `unsafe` call can never read or write out of
//! bounds.

use gemm::Parallelism;

/// A read-only `rows x cols` matrix in `data`: element `(i, j)` at `i * row_stride + j * col_stride`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// A row-major block: `rows` rows of `cols` values, `row_stride` apart, starting at `offset`.
    pub fn rows(data: &'a [f32], offset: usize, rows: usize, cols: usize, row_stride: usize) -> Self {
        View {
            data: data.get(offset..).unwrap_or(&[]),
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// A writable `rows x cols` matrix in `data` (row-major, `row_stride` apart).
#[derive(Debug)]
pub struct ViewMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

impl<'a> ViewMut<'a> {
    /// `rows` rows of `cols` values, `row_stride` apart, starting at `offset`.
    pub fn rows(data: &'a mut [f32], offset: usize, rows: usize, cols: usize, row_stride: usize) -> Self {
        let len = data.len();
        ViewMut {
            data: &mut data[offset.min(len)..],
            rows,
            cols,
            row_stride,
        }
    }
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` with `accumulate`), times `scale`.
///
/// Panics when the shapes disagree or a view reaches past its slice: both are bugs of the caller,
/// never a property of input data (every shape is checked against the model's when it loads).
pub fn product(dst: ViewMut<'_>, lhs: View<'_>, rhs: View<'_>, scale: f32, accumulate: bool, threads: usize) {
    assert!(
        lhs.rows == dst.rows && rhs.cols == dst.cols && lhs.cols == rhs.rows,
        "gemm shapes: {}x{} = {}x{} * {}x{}",
        dst.rows,
        dst.cols,
        lhs.rows,
        lhs.cols,
        rhs.rows,
        rhs.cols
    );
    assert!(lhs.fits() && rhs.fits(), "gemm input view reaches past its slice");
    assert!(
        dst.rows == 0 || dst.cols == 0 || (dst.rows - 1) * dst.row_stride + dst.cols <= dst.data.len(),
        "gemm destination view reaches past its slice"
    );
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    if lhs.cols == 0 {
        if !accumulate {
            for row in dst.data.chunks_mut(dst.row_stride.max(1)).take(dst.rows) {
                row[..dst.cols].fill(0.0);
            }
        }
        return;
    }
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above keep every index the product touches inside its slice (the largest
    // is (rows-1)*row_stride + (cols-1)*col_stride for each view); `dst` is borrowed mutably, so
    // it cannot alias `lhs` or `rhs`, which are shared borrows.
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            lhs.cols,
            dst.data.as_mut_ptr(),
            1,
            dst.row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn products_over_transposed_and_strided_views_match_the_definition() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![0f32; m * n];
        product(
            ViewMut::rows(&mut c, 0, m, n, n),
            View::rows(&a, 0, m, k, k),
            View::rows(&b, 0, k, n, n),
            1.0,
            false,
            1,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
        // b stored transposed (n x k), read through t(); accumulate doubles the result.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        product(
            ViewMut::rows(&mut c, 0, m, n, n),
            View::rows(&a, 0, m, k, k),
            View::rows(&bt, 0, n, k, k).t(),
            1.0,
            true,
            2,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - 2.0 * y).abs() < 1e-4);
        }
    }

    #[test]
    #[should_panic(expected = "past its slice")]
    fn a_view_past_its_slice_is_refused() {
        let a = vec![0f32; 6];
        let mut c = vec![0f32; 4];
        product(
            ViewMut::rows(&mut c, 0, 2, 2, 2),
            View::rows(&a, 0, 2, 4, 4),
            View::rows(&a, 0, 4, 2, 2),
            1.0,
            false,
            1,
        );
    }
}
