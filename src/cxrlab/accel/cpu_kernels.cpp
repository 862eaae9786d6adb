// Hand-written CPU kernels for seed-cnn training's hot spots (see kernels.py for why).
//
// 1. 2x2 stride-2 max-pool: forward writes a one-byte argmax code (0-3) per output,
// backward scatters the output gradient into its 2x2 window and zeroes the other three values, so the
// gradient needs no separate zero-fill. Layout: (planes, H, W, C) with C contiguous, which covers
// channels_last (planes = N) and contiguous NCHW (planes = N * C, C = 1). Element types: bf16 (as
// uint16 bits) and float32. Semantics are ATen's: the first maximum in window order wins a tie, and a
// NaN wins (the last NaN in window order).
//
// 2. The first block of seed-cnn: a KxK 'same' convolution of a one-channel image into O channels, then
// the 2x2 max-pool and optionally the ReLU, without writing the full-resolution feature map (at 256 px it is 4x the pooled one).
// Forward keeps the argmax code; backward gives the weight and bias gradients (the input's is not
// needed: images need no gradient), from the pooled gradient and the argmax, again without the
// full-resolution map. With bf16 on, each convolution output is rounded to bf16 before the max, as
// bf16 autocast computes it (fp32 accumulation, bf16 output).
//
// Built by cxrlab/accel/kernels.py; plain C ABI for ctypes.
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace {

inline float to_float(uint16_t bits) {
    uint32_t wide = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &wide, sizeof f);
    return f;
}
inline float to_float(float v) { return v; }

// one output row: windows from input rows r0 and r1 (each W * C wide)
template <typename T, int C>
inline void forward_row(const T* __restrict r0, const T* __restrict r1, T* __restrict out,
                        uint8_t* __restrict code, int64_t ow_count, int64_t c_rt) {
    const int64_t ch = C > 0 ? C : c_rt;
    for (int64_t ow = 0; ow < ow_count; ++ow) {
        const T* a = r0 + 2 * ow * ch;
        const T* c = r1 + 2 * ow * ch;
        T* o = out + ow * ch;
        uint8_t* k = code + ow * ch;
#pragma omp simd
        for (int64_t j = 0; j < ch; ++j) {
            T best = a[j];
            float m = to_float(best);
            uint8_t arg = 0;
            const T cand[3] = {a[ch + j], c[j], c[ch + j]};
            for (int q = 0; q < 3; ++q) {
                float v = to_float(cand[q]);
                bool take = (v > m) || (v != v);
                best = take ? cand[q] : best;
                m = take ? v : m;
                arg = take ? static_cast<uint8_t>(q + 1) : arg;
            }
            o[j] = best;
            k[j] = arg;
        }
    }
}

template <typename T, int C>
void forward(const T* x, T* y, uint8_t* code, int64_t planes, int64_t h, int64_t w, int64_t c, int threads) {
    const int64_t oh = h / 2, ow = w / 2, rows = planes * oh;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t p = r / oh, i = r % oh;
        const T* r0 = x + ((p * h) + 2 * i) * w * c;
        forward_row<T, C>(r0, r0 + w * c, y + r * ow * c, code + r * ow * c, ow, c);
    }
}

// the gradient only moves values, so it works on raw bits of the element size
template <typename T, int C>
void backward(const T* gy, const uint8_t* code, T* gx, int64_t planes, int64_t h, int64_t w, int64_t c,
              int threads) {
    const int64_t oh = h / 2, ow_count = w / 2, rows = planes * oh;
    const int64_t ch = C > 0 ? C : c;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t p = r / oh, i = r % oh;
        T* r0 = gx + ((p * h) + 2 * i) * w * ch;
        T* r1 = r0 + w * ch;
        const T* g = gy + r * ow_count * ch;
        const uint8_t* k = code + r * ow_count * ch;
        for (int64_t ow = 0; ow < ow_count; ++ow) {
            T* a = r0 + 2 * ow * ch;
            T* b = r1 + 2 * ow * ch;
#pragma omp simd
            for (int64_t j = 0; j < ch; ++j) {
                const T v = g[ow * ch + j];
                const uint8_t q = k[ow * ch + j];
                a[j] = q == 0 ? v : T(0);
                a[ch + j] = q == 1 ? v : T(0);
                b[j] = q == 2 ? v : T(0);
                b[ch + j] = q == 3 ? v : T(0);
            }
        }
    }
}

// calls f with the channel count as a compile-time constant for the common ones (0: any other)
template <typename F>
void with_channels(int64_t c, F&& f) {
    switch (c) {
        case 1: return f(std::integral_constant<int, 1>{});
        case 8: return f(std::integral_constant<int, 8>{});
        case 12: return f(std::integral_constant<int, 12>{});
        case 16: return f(std::integral_constant<int, 16>{});
        case 20: return f(std::integral_constant<int, 20>{});
        case 32: return f(std::integral_constant<int, 32>{});
        case 64: return f(std::integral_constant<int, 64>{});
        default: return f(std::integral_constant<int, 0>{});
    }
}

template <typename T>
void forward_any(const T* x, T* y, uint8_t* code, int64_t planes, int64_t h, int64_t w, int64_t c, int t) {
    with_channels(c, [&](auto C) { forward<T, decltype(C)::value>(x, y, code, planes, h, w, c, t); });
}

template <typename T>
void backward_any(const T* gy, const uint8_t* code, T* gx, int64_t planes, int64_t h, int64_t w, int64_t c,
                  int t) {
    with_channels(c, [&](auto C) { backward<T, decltype(C)::value>(gy, code, gx, planes, h, w, c, t); });
}

// Eight fp32 lanes (GCC/Clang vector extensions: AVX registers on x86, pairs of NEON registers on ARM).
// The convolution keeps a block of 8 output columns in registers across all taps and window positions;
// a plain loop over columns per tap was 10x slower (loop overhead on 128-wide rows).
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
constexpr int kLanes = 8;

inline v8 load8(const float* p) {
    v8 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline v8 splat(float f) { return v8{f, f, f, f, f, f, f, f}; }

inline v8 round_to_bf16(v8 v) {  // round to nearest even, NaN stays NaN; still stored as fp32
    v8i u;
    std::memcpy(&u, &v, sizeof u);
    const v8i nan = (u & 0x7fffffff) > 0x7f800000;
    const v8i rounded = nan ? (u | 0x400000) : u + 0x7fff + ((u >> 16) & 1);
    const v8i bits = rounded & static_cast<int32_t>(0xffff0000u);
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

inline float round_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    u = (u & 0x7fffffffu) > 0x7f800000u ? (u | 0x400000u) : u + 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// Rows 2*i - pad ... 2*i + 1 + pad of one image (K + 1 rows), zero-padded by `pad` columns on each side
// and split into even and odd columns: the tap at padded column 2*ow + s of row t is then
// cols[(t * 2 + (s & 1)) * half + ow + (s >> 1)], contiguous in ow. With bf16 the image is rounded to
// bf16 as it is read, as autocast rounds a convolution's input.
inline void split_rows(const float* img, int64_t h, int64_t w, int64_t i, int k, int64_t half, float* cols,
                       int bf16) {
    const int pad = k / 2;
    for (int t = 0; t < k + 1; ++t) {
        const int64_t src = 2 * i - pad + t;
        float* even = cols + (t * 2) * half;
        float* odd = even + half;
        if (src < 0 || src >= h) {
            for (int64_t j = 0; j < half; ++j) even[j] = odd[j] = 0.f;
            continue;
        }
        const float* row = img + src * w;
        // even[j] is image column 2j - pad, odd[j] is 2j + 1 - pad; inside [lo, hi) both exist
        const int64_t lo = (pad + 1) / 2, hi = (w - 1 + pad) / 2;
        for (int64_t j = 0; j < half; ++j) {
            if (j == lo && lo < hi) j = hi;  // the inside is done below, without bounds checks
            const int64_t c0 = 2 * j - pad, c1 = c0 + 1;
            even[j] = c0 >= 0 && c0 < w ? row[c0] : 0.f;
            odd[j] = c1 >= 0 && c1 < w ? row[c1] : 0.f;
            if (bf16) even[j] = round_to_bf16(even[j]), odd[j] = round_to_bf16(odd[j]);
        }
        const float* base = row - pad;
        if (bf16) {
#pragma omp simd
            for (int64_t j = lo; j < hi; ++j) even[j] = round_to_bf16(base[2 * j]), odd[j] = round_to_bf16(base[2 * j + 1]);
        } else {
#pragma omp simd
            for (int64_t j = lo; j < hi; ++j) even[j] = base[2 * j], odd[j] = base[2 * j + 1];
        }
    }
}

inline int64_t plane_width(int64_t ow_count, int k) {  // room for whole 8-column blocks and the taps
    return (ow_count + kLanes - 1) / kLanes * kLanes + k + 1;
}

template <int K>
inline void load_block(const float* cols, int64_t half, int64_t j0, v8 (&in)[K + 1][K + 1]) {
    for (int t = 0; t < K + 1; ++t)
        for (int s = 0; s < K + 1; ++s) in[t][s] = load8(cols + (t * 2 + (s & 1)) * half + (s >> 1) + j0);
}

// Inside a parallel region: this thread's share of the output rows, each as 8-column blocks with their
// (K + 1) x (K + 1) input taps loaded; block(r, j0, lanes, in) per block, row_done() after each row.
template <int K, typename Block, typename RowDone>
void for_each_block(const float* x, int64_t n, int64_t h, int64_t w, int bf16, float* cols, Block&& block,
                    RowDone&& row_done) {
    const int64_t oh = h / 2, ow_count = w / 2, half = plane_width(ow_count, K);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < n * oh; ++r) {
        split_rows(x + (r / oh) * h * w, h, w, r % oh, K, half, cols, bf16);
        for (int64_t j0 = 0; j0 < ow_count; j0 += kLanes) {
            v8 in[K + 1][K + 1];
            load_block<K>(cols, half, j0, in);
            block(r, j0, static_cast<int>(ow_count - j0 < kLanes ? ow_count - j0 : kLanes), in);
        }
        row_done();
    }
}

// x: (N, H, W) fp32; wt: (O, K*K) weights; y: (N, H/2, W/2, O) bf16 bits or fp32; code alike
template <int K>
void conv_pool_forward(const float* x, const float* wt, const float* bias, void* y, uint8_t* code, int64_t n,
                       int64_t h, int64_t w, int64_t out, int bf16, int relu, int threads) {
    const int64_t ow_count = w / 2;
#pragma omp parallel num_threads(threads)
    {
        float* cols = new float[(K + 1) * 2 * plane_width(ow_count, K)];
        auto block = [&](int64_t r, int64_t j0, int lanes, const v8 (&in)[K + 1][K + 1]) {
            for (int64_t o = 0; o < out; ++o) {
                const float* wo = wt + o * K * K;
                v8 best = splat(0.f);
                v8i arg = v8i{};
                for (int q = 0; q < 4; ++q) {
                    const int dy = q >> 1, dx = q & 1;
                    v8 acc = splat(bias[o]);
                    for (int ky = 0; ky < K; ++ky)
                        for (int kx = 0; kx < K; ++kx) acc += splat(wo[ky * K + kx]) * in[dy + ky][dx + kx];
                    const v8i take = q == 0 ? v8i{} - 1 : ((acc > best) | (acc != acc));
                    best = take ? acc : best;
                    arg = take ? v8i{} + q : arg;
                }
                // bf16 output rounded once, after the max: rounding is monotone, so the maximum is the same
                // as autocast's; only which of two values that round alike wins can differ
                if (bf16) best = round_to_bf16(best);
                if (relu) {  // ReLU(x) = x if x > 0 (NaN stays NaN), else 0; code 4: no gradient
                    const v8i positive = best > 0.f;
                    best = (positive | (best != best)) ? best : splat(0.f);
                    arg = positive ? arg : v8i{} + 4;
                }
                const int64_t at = (r * ow_count + j0) * out + o;
                for (int l = 0; l < lanes; ++l) {
                    if (bf16) {
                        uint32_t u;
                        std::memcpy(&u, &best[l], sizeof u);
                        static_cast<uint16_t*>(y)[at + l * out] = static_cast<uint16_t>(u >> 16);
                    } else {
                        static_cast<float*>(y)[at + l * out] = best[l];
                    }
                    code[at + l * out] = static_cast<uint8_t>(arg[l]);
                }
            }
        };
        for_each_block<K>(x, n, h, w, bf16, cols, block, [] {});
        delete[] cols;
    }
}

// gy: (N, H/2, W/2, O) bf16 bits or fp32; gw: (O, K*K) and gb: (O) fp32, overwritten
template <int K>
void conv_pool_backward(const float* x, const void* gy, const uint8_t* code, float* gw, float* gb, int64_t n,
                        int64_t h, int64_t w, int64_t out, int bf16, int threads) {
    const int64_t ow_count = w / 2, taps = K * K;
    for (int64_t j = 0; j < out * taps; ++j) gw[j] = 0.f;
    for (int64_t o = 0; o < out; ++o) gb[o] = 0.f;
#pragma omp parallel num_threads(threads)
    {
        float* cols = new float[(K + 1) * 2 * plane_width(ow_count, K)];
        v8* lw = new v8[out * taps]();  // lane sums of a few rows, then added into fp64 thread sums
        v8* lb = new v8[out]();
        double* tw = new double[out * taps]();
        double* tb = new double[out]();
        int rows_in_lanes = 0;
        auto flush = [&] {
            for (int64_t j = 0; j < out * taps; ++j)
                for (int l = 0; l < kLanes; ++l) tw[j] += lw[j][l];
            for (int64_t o = 0; o < out; ++o)
                for (int l = 0; l < kLanes; ++l) tb[o] += lb[o][l];
            for (int64_t j = 0; j < out * taps; ++j) lw[j] = splat(0.f);
            for (int64_t o = 0; o < out; ++o) lb[o] = splat(0.f);
            rows_in_lanes = 0;
        };
        auto block = [&](int64_t r, int64_t j0, int lanes, const v8 (&in)[K + 1][K + 1]) {
            for (int64_t o = 0; o < out; ++o) {
                const int64_t at = (r * ow_count + j0) * out + o;
                v8 g = splat(0.f);
                v8i c = v8i{} - 1;  // lanes past the row's end: no window, no gradient
                for (int l = 0; l < lanes; ++l) {
                    g[l] = bf16 ? to_float(static_cast<const uint16_t*>(gy)[at + l * out])
                                : static_cast<const float*>(gy)[at + l * out];
                    c[l] = code[at + l * out];
                }
                v8 m[4];  // the gradient at each window position; none where the ReLU cut (code 4)
                for (int q = 0; q < 4; ++q) m[q] = c == q ? g : splat(0.f);
                lb[o] += m[0] + m[1] + m[2] + m[3];
                for (int ky = 0; ky < K; ++ky)
                    for (int kx = 0; kx < K; ++kx)
                        lw[o * taps + ky * K + kx] += m[0] * in[ky][kx] + m[1] * in[ky][kx + 1] +
                                                      m[2] * in[ky + 1][kx] + m[3] * in[ky + 1][kx + 1];
            }
        };
        for_each_block<K>(x, n, h, w, bf16, cols, block, [&] {
            if (++rows_in_lanes == 8) flush();
        });
        flush();
#pragma omp critical
        {
            for (int64_t j = 0; j < out * taps; ++j) gw[j] += static_cast<float>(tw[j]);
            for (int64_t o = 0; o < out; ++o) gb[o] += static_cast<float>(tb[o]);
        }
        delete[] cols;
        delete[] lw;
        delete[] lb;
        delete[] tw;
        delete[] tb;
    }
}

}  // namespace

extern "C" {

// kernel sizes 3 and 5; returns 1 for others
int cxr_conv1_pool_forward(const float* x, const float* wt, const float* bias, void* y, uint8_t* code, int k,
                           int out, int64_t n, int64_t h, int64_t w, int bf16, int relu, int threads) {
    if (k == 3) return conv_pool_forward<3>(x, wt, bias, y, code, n, h, w, out, bf16, relu, threads), 0;
    if (k == 5) return conv_pool_forward<5>(x, wt, bias, y, code, n, h, w, out, bf16, relu, threads), 0;
    return 1;
}

int cxr_conv1_pool_backward(const float* x, const void* gy, const uint8_t* code, float* gw, float* gb, int k,
                            int out, int64_t n, int64_t h, int64_t w, int bf16, int threads) {
    if (k == 3) return conv_pool_backward<3>(x, gy, code, gw, gb, n, h, w, out, bf16, threads), 0;
    if (k == 5) return conv_pool_backward<5>(x, gy, code, gw, gb, n, h, w, out, bf16, threads), 0;
    return 1;
}


// element_bytes: 2 = bfloat16, 4 = float32
int cxr_maxpool2x2_forward(const void* x, void* y, uint8_t* code, int element_bytes, int64_t planes, int64_t h,
                           int64_t w, int64_t c, int threads) {
    if (element_bytes == 2)
        forward_any(static_cast<const uint16_t*>(x), static_cast<uint16_t*>(y), code, planes, h, w, c, threads);
    else if (element_bytes == 4)
        forward_any(static_cast<const float*>(x), static_cast<float*>(y), code, planes, h, w, c, threads);
    else
        return 1;
    return 0;
}

int cxr_maxpool2x2_backward(const void* gy, const uint8_t* code, void* gx, int element_bytes, int64_t planes,
                            int64_t h, int64_t w, int64_t c, int threads) {
    if (element_bytes == 2)
        backward_any(static_cast<const uint16_t*>(gy), code, static_cast<uint16_t*>(gx), planes, h, w, c, threads);
    else if (element_bytes == 4)
        backward_any(static_cast<const uint32_t*>(gy), code, static_cast<uint32_t*>(gx), planes, h, w, c, threads);
    else
        return 1;
    return 0;
}

}  // extern "C"
