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
// 3. Batch norm with batch statistics (training), over channels_last maps, fused with the 2x2 max-pool and
// ReLU that follow it in seed-cnn-bn: per-channel sums of the map; then one pass that normalises, pools and
// cuts, writing only the pooled map and the argmax code; backward, per-channel sums of the pooled gradient
// (and of it times the normalised value at each argmax), then one pass writing the map's gradient. ATen's
// CPU batch norm spends most of seed-cnn-bn's step on these 8-50-channel maps (BENCHMARKS.md).
//
// 4. The first block's batch statistics without its map: the mean and second moments of the KxK patches of a
// one-channel image ('same' zero padding). A convolution's output mean and variance per channel follow from
// them (w.m and w'Cw), so batch norm folds into the convolution's weights and block 2's kernel runs unchanged.
//
// Built by cxrlab/accel/kernels.py; plain C ABI for ctypes.
#include <cstdint>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
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

// A 2x2 window's running maximum over its positions q = 0..3 (the first maximum wins a tie, a NaN wins), then
// the bf16 rounding and the ReLU (code 4: cut, no gradient) that close it: both first-block kernels' epilogue.
inline void window_max(v8 acc, int q, v8& best, v8i& arg) {
    const v8i take = q == 0 ? v8i{} - 1 : ((acc > best) | (acc != acc));
    best = take ? acc : best;
    arg = take ? v8i{} + q : arg;
}
inline void close_window(v8& best, v8i& arg, int bf16, int relu) {
    // bf16 output rounded once, after the max: rounding is monotone, so the maximum is the same as autocast's;
    // only which of two values that round alike wins can differ
    if (bf16) best = round_to_bf16(best);
    if (relu) {  // ReLU(x) = x if x > 0 (NaN stays NaN), else 0
        const v8i positive = best > 0.f;
        best = (positive | (best != best)) ? best : splat(0.f);
        arg = positive ? arg : v8i{} + 4;
    }
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
                    window_max(acc, q, best, arg);
                }
                close_window(best, arg, bf16, relu);
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

// per-channel sum and sum of squares of a (rows, W, C) map: fp32 within a row, fp64 across rows
template <typename T, int C>
void bn_stats(const T* z, int64_t rows, int64_t w, int64_t c, double* sum, double* sumsq, int threads) {
    const int64_t ch = C > 0 ? C : c;
    for (int64_t j = 0; j < ch; ++j) sum[j] = sumsq[j] = 0.0;
#pragma omp parallel num_threads(threads)
    {
        float* fs = new float[2 * ch];
        float* fq = fs + ch;
        double* ts = new double[2 * ch]();
        double* tq = ts + ch;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            const T* row = z + r * w * ch;
            for (int64_t j = 0; j < ch; ++j) fs[j] = fq[j] = 0.f;
            for (int64_t x = 0; x < w; ++x) {
#pragma omp simd
                for (int64_t j = 0; j < ch; ++j) {
                    const float v = to_float(row[x * ch + j]);
                    fs[j] += v;
                    fq[j] += v * v;
                }
            }
            for (int64_t j = 0; j < ch; ++j) ts[j] += fs[j], tq[j] += fq[j];
        }
#pragma omp critical
        for (int64_t j = 0; j < ch; ++j) sum[j] += ts[j], sumsq[j] += tq[j];
        delete[] fs;
        delete[] ts;
    }
}

// Channel vectors: eight channels at a time, the last chunk partial (`lanes` < 8); bf16 widened to fp32 on
// load and rounded to nearest even on store. A plain loop over channels did not vectorise (GCC 12) and ran
// 3-4x slower.
typedef uint16_t v8h __attribute__((vector_size(16)));
typedef uint8_t v8b __attribute__((vector_size(8)));
constexpr int kMaxChannels = 64;

// A partial chunk (C not a multiple of 8: 12, 20, 50 here) is read and written with AVX-512 masked byte
// loads and stores where the CPU has them: a memcpy into part of a vector stalls on store forwarding (4x slower
// per value, BENCHMARKS.md). Elsewhere the memcpy path computes the same, slower.
#if defined(__AVX512VL__) && defined(__AVX512BW__)
#define CXR_MASKED 1
inline __mmask32 byte_mask(int bytes) { return static_cast<__mmask32>((1ull << bytes) - 1); }
#elif defined(__AVX2__)
// AVX2 has masked loads and stores of 32-bit lanes only: they serve the fp32 chunks (12 channels' pool forward
// took 0.55 ms against 16 channels' 0.26 ms on an AVX2 EPYC with the memcpy path; BENCHMARKS.md, session 17);
// the argmax codes' 4-byte part is read through a scalar register, which does not stall
#define CXR_MASKED_32 1
inline __m256i lane_mask(int lanes) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif

// the first `bytes` bytes at p as a vector V (up to 32 bytes), the rest zero; and back
template <typename V>
inline V load_partial(const void* p, int bytes) {
    V v;
    if (bytes == static_cast<int>(sizeof v)) {
        std::memcpy(&v, p, sizeof v);
        return v;
    }
#ifdef CXR_MASKED
    const __m256i x = _mm256_maskz_loadu_epi8(byte_mask(bytes), p);
    std::memcpy(&v, &x, sizeof v);
#else
#ifdef CXR_MASKED_32
    if constexpr (sizeof(V) == 32) {
        if (bytes % 4 == 0) {
            const __m256 x = _mm256_maskload_ps(static_cast<const float*>(p), lane_mask(bytes / 4));
            std::memcpy(&v, &x, sizeof v);
            return v;
        }
    } else if constexpr (sizeof(V) == 8) {
        uint64_t bits = 0;
        std::memcpy(&bits, p, bytes);
        std::memcpy(&v, &bits, sizeof v);
        return v;
    }
#endif
    std::memset(&v, 0, sizeof v);
    std::memcpy(&v, p, bytes);
#endif
    return v;
}
template <typename V>
inline void store_partial(void* p, const V& v, int bytes) {
    if (bytes == static_cast<int>(sizeof v)) {
        std::memcpy(p, &v, sizeof v);
        return;
    }
#ifdef CXR_MASKED
    __m256i x = _mm256_setzero_si256();
    std::memcpy(&x, &v, sizeof v);
    _mm256_mask_storeu_epi8(p, byte_mask(bytes), x);
#else
#ifdef CXR_MASKED_32
    if constexpr (sizeof(V) == 32) {
        if (bytes % 4 == 0) {
            __m256 x;
            std::memcpy(&x, &v, sizeof v);
            _mm256_maskstore_ps(static_cast<float*>(p), lane_mask(bytes / 4), x);
            return;
        }
    }
#endif
    std::memcpy(p, &v, bytes);
#endif
}

inline v8 load_lanes(const float* p, int lanes) { return load_partial<v8>(p, lanes * sizeof(float)); }
inline v8 load_lanes(const uint16_t* p, int lanes) {
    const v8i wide = __builtin_convertvector(load_partial<v8h>(p, lanes * sizeof(uint16_t)), v8i) << 16;
    v8 v;
    std::memcpy(&v, &wide, sizeof v);
    return v;
}
inline void store_lanes(float* p, v8 v, int lanes) { store_partial(p, v, lanes * sizeof(float)); }
inline void store_lanes(uint16_t* p, v8 v, int lanes) {
    const v8 r = round_to_bf16(v);
    v8i u;
    std::memcpy(&u, &r, sizeof u);
    const v8h bits = __builtin_convertvector(u >> 16, v8h);  // the low 16 bits after the shift: the bf16
    store_partial(p, bits, lanes * sizeof(uint16_t));
}
inline v8i load_code(const uint8_t* p, int lanes) { return __builtin_convertvector(load_partial<v8b>(p, lanes), v8i); }
inline void store_code(uint8_t* p, v8i code, int lanes) { store_partial(p, __builtin_convertvector(code, v8b), lanes); }

// The first block's forward with the output channels in the lanes, for O a multiple of 8 (seed-cnn's 8): each group
// of 8 channels holds its K*K weight vectors in registers, each tap is one broadcast of an input pixel, and a
// pixel's 8 channels are one contiguous store in the channels_last output. The column-vectorised conv_pool_forward
// keeps (K + 1)^2 input vectors live, more than AVX2's 16 registers, and stores each channel lane by lane: this
// one took 13 against 23 ms for 72 images at 256 px on an AVX2 EPYC (BENCHMARKS.md, session 17). Each output
// value is the same operations in the same order (bias, then the taps row by row as fused multiply-adds, then the
// window's first maximum), so the two give the same bits (tests).
template <int K>
void conv_pool_forward_channels(const float* x, const float* wt, const float* bias, void* y, uint8_t* code,
                                int64_t n, int64_t h, int64_t w, int64_t out, int bf16, int relu, int threads) {
    constexpr int pad = K / 2, taps = K * K;
    const int64_t oh = h / 2, ow_count = w / 2, pw = w + 2 * pad + 2;  // a padded row, room for an odd width
    float* wtap = new float[taps * out];  // weights by tap, then channel: a tap's 8 channels are one load
    for (int64_t o = 0; o < out; ++o)
        for (int t = 0; t < taps; ++t) wtap[t * out + o] = wt[o * taps + t];
#pragma omp parallel num_threads(threads)
    {
        float* rows = new float[(K + 1) * pw];  // input rows 2i - pad ... 2i + 1 + pad, zero-padded
#pragma omp for schedule(static)
        for (int64_t r = 0; r < n * oh; ++r) {
            const float* img = x + (r / oh) * h * w;
            for (int t = 0; t < K + 1; ++t) {
                float* dst = rows + t * pw;
                const int64_t src = 2 * (r % oh) - pad + t;
                for (int64_t j = 0; j < pw; ++j) dst[j] = 0.f;
                if (src < 0 || src >= h) continue;
                const float* row = img + src * w;
                if (bf16) {
                    for (int64_t j = 0; j < w; ++j) dst[pad + j] = round_to_bf16(row[j]);
                } else {
                    std::memcpy(dst + pad, row, w * sizeof(float));
                }
            }
            for (int64_t g = 0; g < out; g += kLanes) {
                v8 wv[taps];
                for (int t = 0; t < taps; ++t) wv[t] = load8(wtap + t * out + g);
                const v8 b = load8(bias + g);
                for (int64_t ow = 0; ow < ow_count; ++ow) {
                    v8 best = splat(0.f);
                    v8i arg = v8i{};
                    for (int q = 0; q < 4; ++q) {
                        const float* at = rows + (q >> 1) * pw + 2 * ow + (q & 1);
                        v8 acc = b;
                        for (int ky = 0; ky < K; ++ky)
                            for (int kx = 0; kx < K; ++kx) acc += splat(at[ky * pw + kx]) * wv[ky * K + kx];
                        window_max(acc, q, best, arg);
                    }
                    close_window(best, arg, bf16, relu);
                    const int64_t at = (r * ow_count + ow) * out + g;
                    if (bf16)
                        store_lanes(static_cast<uint16_t*>(y) + at, best, kLanes);
                    else
                        store_lanes(static_cast<float*>(y) + at, best, kLanes);
                    store_code(code + at, arg, kLanes);
                }
            }
        }
        delete[] rows;
    }
    delete[] wtap;
}
inline v8 select(v8i mask, v8 a, v8 b) { return mask ? a : b; }

// calls f(j0, lanes) for each chunk of eight channels; with C known at compile time the chunks are unrolled
// here (GCC 12 did not unroll the loop itself, and a variable `lanes` made every load a memcpy call)
template <int C, int J0 = 0, typename F>
inline void static_chunks(F&& f) {
    if constexpr (J0 < C) {
        f(J0, C - J0 < kLanes ? C - J0 : kLanes);
        static_chunks<C, J0 + kLanes>(f);
    }
}

template <int C, typename F>
inline void for_chunks(int64_t ch, F&& f) {
    if constexpr (C > 0) {
        static_chunks<C>(f);
    } else {
        for (int j0 = 0; j0 < ch; j0 += kLanes) f(j0, static_cast<int>(ch - j0 < kLanes ? ch - j0 : kLanes));
    }
}

// y = max-pool(scale * z + shift), then the ReLU (code 4: cut, no gradient); even H and W, C <= 64.
// Ties and NaNs as the max-pool kernel above; ReLU(NaN) is NaN, ReLU(0) has no gradient (as ATen's).
template <typename T, int C>
void bn_pool_forward(const T* z, const float* scale, const float* shift, T* y, uint8_t* code, int64_t planes,
                     int64_t h, int64_t w, int64_t c, int relu, int threads) {
    const int64_t oh = h / 2, ow_count = w / 2, rows = planes * oh;
    const int64_t ch = C > 0 ? C : c;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t p = r / oh, i = r % oh;
        const T* r0 = z + ((p * h) + 2 * i) * w * ch;
        const T* r1 = r0 + w * ch;
        for (int64_t ow = 0; ow < ow_count; ++ow) {
            const T* a = r0 + 2 * ow * ch;
            const T* b = r1 + 2 * ow * ch;
            const int64_t at = (r * ow_count + ow) * ch;
            for_chunks<C>(ch, [&](int j0, int lanes) {
                const v8 sc = load_lanes(scale + j0, lanes), sh = load_lanes(shift + j0, lanes);
                const v8 v[4] = {load_lanes(a + j0, lanes) * sc + sh, load_lanes(a + ch + j0, lanes) * sc + sh,
                                 load_lanes(b + j0, lanes) * sc + sh, load_lanes(b + ch + j0, lanes) * sc + sh};
                v8 m = v[0];
                v8i arg = v8i{};
                for (int q = 1; q < 4; ++q) {
                    const v8i take = (v[q] > m) | (v[q] != v[q]);
                    m = select(take, v[q], m);
                    arg = take ? v8i{} + q : arg;
                }
                if (relu) {
                    const v8i cut = m <= 0.f;  // false for NaN
                    m = select(cut, splat(0.f), m);
                    arg = cut ? v8i{} + 4 : arg;
                }
                store_lanes(y + at + j0, m, lanes);
                store_code(code + at + j0, arg, lanes);
            });
        }
    }
}

// s1 = sum of the gradient reaching the map (the pooled gradient where code < 4), s2 = the same times
// (z - mean) at the argmax; per channel, fp32 within a row, fp64 across rows
template <typename T, int C>
void bn_pool_backward_sums(const T* gy, const uint8_t* code, const T* z, const float* mean, int64_t planes,
                           int64_t h, int64_t w, int64_t c, double* s1, double* s2, int threads) {
    const int64_t oh = h / 2, ow_count = w / 2, rows = planes * oh;
    const int64_t ch = C > 0 ? C : c;
    const int chunks = static_cast<int>((ch + kLanes - 1) / kLanes);
    for (int64_t j = 0; j < ch; ++j) s1[j] = s2[j] = 0.0;
#pragma omp parallel num_threads(threads)
    {
        double t1[kMaxChannels] = {}, t2[kMaxChannels] = {};
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t p = r / oh, i = r % oh;
            const T* r0 = z + ((p * h) + 2 * i) * w * ch;
            const T* r1 = r0 + w * ch;
            v8 f1[kMaxChannels / kLanes], f2[kMaxChannels / kLanes];
            for (int k = 0; k < chunks; ++k) f1[k] = f2[k] = splat(0.f);
            for (int64_t ow = 0; ow < ow_count; ++ow) {
                const T* a = r0 + 2 * ow * ch;
                const T* b = r1 + 2 * ow * ch;
                const int64_t at = (r * ow_count + ow) * ch;
                for_chunks<C>(ch, [&](int j0, int lanes) {
                    const v8i q = load_code(code + at + j0, lanes);
                    const v8 zs = select(q == 0, load_lanes(a + j0, lanes),
                                         select(q == 1, load_lanes(a + ch + j0, lanes),
                                                select(q == 2, load_lanes(b + j0, lanes), load_lanes(b + ch + j0, lanes))));
                    const v8 g = select(q < 4, load_lanes(gy + at + j0, lanes), splat(0.f));
                    f1[j0 / kLanes] += g;
                    f2[j0 / kLanes] += g * (zs - load_lanes(mean + j0, lanes));
                });
            }
            for (int64_t j = 0; j < ch; ++j) t1[j] += f1[j / kLanes][j % kLanes], t2[j] += f2[j / kLanes][j % kLanes];
        }
#pragma omp critical
        for (int64_t j = 0; j < ch; ++j) s1[j] += t1[j], s2[j] += t2[j];
    }
}

// dz = scale * (dy - m1 - (z - mean) * m2), where dy is the pooled gradient at each window's argmax and 0
// elsewhere; m1 = s1 / M and m2 = s2 * invstd^2 / M (M values per channel)
template <typename T, int C>
void bn_pool_backward_dx(const T* gy, const uint8_t* code, const T* z, const float* scale, const float* mean,
                         const float* m1, const float* m2, T* dz, int64_t planes, int64_t h, int64_t w, int64_t c,
                         int threads) {
    const int64_t oh = h / 2, ow_count = w / 2, rows = planes * oh;
    const int64_t ch = C > 0 ? C : c;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t p = r / oh, i = r % oh;
        const int64_t off = ((p * h) + 2 * i) * w * ch;
        for (int64_t ow = 0; ow < ow_count; ++ow) {
            const int64_t at = (r * ow_count + ow) * ch;
            const int64_t pos[4] = {off + 2 * ow * ch, off + (2 * ow + 1) * ch, off + (w + 2 * ow) * ch,
                                    off + (w + 2 * ow + 1) * ch};
            for_chunks<C>(ch, [&](int j0, int lanes) {
                const v8i q = load_code(code + at + j0, lanes);
                const v8 g = load_lanes(gy + at + j0, lanes);
                const v8 sc = load_lanes(scale + j0, lanes), k2 = load_lanes(m2 + j0, lanes);
                const v8 base = load_lanes(mean + j0, lanes) * k2 - load_lanes(m1 + j0, lanes);
                for (int t = 0; t < 4; ++t) {
                    const v8 dy = select(q == t, g, splat(0.f));
                    store_lanes(dz + pos[t] + j0, sc * (dy + base - load_lanes(z + pos[t] + j0, lanes) * k2), lanes);
                }
            });
        }
    }
}

// Sums over every output position of a 'same' KxK convolution of (N, H, W) images: m[t] of each tap's value
// and g[t * K*K + s] of the products of taps t and s (both fp64; g filled symmetric). Taps are rounded to bf16
// first when bf16 is set, as autocast rounds a convolution's input.
template <int K>
void conv1_moments(const float* x, int64_t n, int64_t h, int64_t w, int bf16, double* m, double* g, int threads) {
    // Computed from row pairs, not per position: a tap pair (t, s) of rows ty <= sy and columns tx, sx sums
    // x[a][c] * x[a + sy - ty][c + sx - tx] over the rows a and columns c its taps cover, which is the
    // full-row dot product F(a, dy, dx) minus at most K/2 products at one end of the row. So each image
    // row costs K * (2K - 1) dot products (15 for 3x3) instead of K^2 (K^2 + 1) / 2 products per position
    // (45): about 3x faster than accumulating every pair at every position (BENCHMARKS.md).
    constexpr int taps = K * K, pad = K / 2, span = K - 1, shifts = 2 * K - 1;
    const int64_t width = w + 2 * span + kLanes;  // zero margins for the shifts, one spare block for the loads
    for (int t = 0; t < taps; ++t) m[t] = 0.0;
    for (int t = 0; t < taps * taps; ++t) g[t] = 0.0;
#pragma omp parallel num_threads(threads)
    {
        float* buf = new float[K * width];  // rows a .. a + K - 1 (zero past the image), each at offset span
        double tm[taps] = {}, tg[taps * taps] = {};
#pragma omp for schedule(static)
        for (int64_t r = 0; r < n * h; ++r) {
            const float* img = x + (r / h) * h * w;
            const int64_t a = r % h;
            for (int d = 0; d < K; ++d) {
                float* row = buf + d * width;
                for (int64_t j = 0; j < width; ++j) row[j] = 0.f;
                if (a + d >= h) continue;
                const float* src = img + (a + d) * w;
                for (int64_t j = 0; j < w; ++j) row[span + j] = bf16 ? round_to_bf16(src[j]) : src[j];
            }
            const float* r0 = buf + span;  // row a; r0[c] for c in [-span, w + span + kLanes)
            v8 acc[K][shifts], sum = splat(0.f);
            for (int dy = 0; dy < K; ++dy)
                for (int dx = 0; dx < shifts; ++dx) acc[dy][dx] = splat(0.f);
            for (int64_t c0 = 0; c0 < w; c0 += kLanes) {  // r0 is zero past w: the last block needs no mask
                const v8 u = load8(r0 + c0);
                sum += u;
                for (int dy = 0; dy < K; ++dy)
                    for (int dx = 0; dx < shifts; ++dx) acc[dy][dx] += u * load8(r0 + dy * width + c0 + dx - span);
            }
            double full[K][shifts], row_sum = 0.0;
            for (int l = 0; l < kLanes; ++l) row_sum += sum[l];
            for (int dy = 0; dy < K; ++dy)
                for (int dx = 0; dx < shifts; ++dx) {
                    full[dy][dx] = 0.0;
                    for (int l = 0; l < kLanes; ++l) full[dy][dx] += acc[dy][dx][l];
                }
            // the columns tap tx covers are c in [e, w + e), e = tx - pad: the full row less c < e (e > 0) or
            // c >= w + e (e < 0); the rows tap ty covers are a in [ty - pad, ty - pad + h)
            auto uncovered = [&](int e, int dy, int dx) {  // the products outside tap column e's range
                double out = 0.0;
                const float* rd = r0 + dy * width + dx;
                for (int64_t c = e > 0 ? 0 : w + e; c < (e > 0 ? e : w); ++c) out += double(r0[c]) * rd[c];
                return out;
            };
            auto uncovered_sum = [&](int e) {
                double out = 0.0;
                for (int64_t c = e > 0 ? 0 : w + e; c < (e > 0 ? e : w); ++c) out += r0[c];
                return out;
            };
            for (int ty = 0; ty < K; ++ty) {
                if (a < ty - pad || a >= ty - pad + h) continue;
                for (int tx = 0; tx < K; ++tx) {
                    const int e = tx - pad, t = ty * K + tx;
                    tm[t] += row_sum - uncovered_sum(e);
                    for (int sy = ty; sy < K; ++sy)
                        for (int sx = 0; sx < K; ++sx) {
                            const int s2 = sy * K + sx;
                            if (s2 < t) continue;
                            const int dy = sy - ty, dx = sx - tx;
                            tg[t * taps + s2] += full[dy][dx + span] - uncovered(e, dy, dx);
                        }
                }
            }
        }
#pragma omp critical
        {
            for (int t = 0; t < taps; ++t) m[t] += tm[t];
            for (int t = 0; t < taps * taps; ++t) g[t] += tg[t];
        }
        delete[] buf;
    }
    for (int t = 0; t < taps; ++t)
        for (int s = 0; s < t; ++s) g[t * taps + s] = g[s * taps + t];
}

template <typename F>
void with_element(int element_bytes, F&& f) {  // calls f(T{}) for bf16 (as uint16 bits) or fp32
    if (element_bytes == 2) f(uint16_t{});
    else f(float{});
}

}  // namespace

extern "C" {

// kernel sizes 3 and 5; returns 1 for others
int cxr_conv1_pool_forward(const float* x, const float* wt, const float* bias, void* y, uint8_t* code, int k,
                           int out, int64_t n, int64_t h, int64_t w, int bf16, int relu, int threads) {
    if (out % kLanes == 0) {
        if (k == 3) return conv_pool_forward_channels<3>(x, wt, bias, y, code, n, h, w, out, bf16, relu, threads), 0;
        if (k == 5) return conv_pool_forward_channels<5>(x, wt, bias, y, code, n, h, w, out, bf16, relu, threads), 0;
        return 1;
    }
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

// Batch norm over channels_last (planes, H, W, C) maps; element_bytes 2 = bf16, 4 = fp32; returns 1 if unsupported
int cxr_bn_stats(const void* z, int element_bytes, int64_t rows, int64_t w, int64_t c, double* sum, double* sumsq,
                 int threads) {
    if (element_bytes != 2 && element_bytes != 4) return 1;
    with_element(element_bytes, [&](auto t) {
        using T = decltype(t);
        with_channels(c, [&](auto C) { bn_stats<T, decltype(C)::value>(static_cast<const T*>(z), rows, w, c, sum, sumsq, threads); });
    });
    return 0;
}

int cxr_bn_pool_forward(const void* z, const float* scale, const float* shift, void* y, uint8_t* code,
                        int element_bytes, int64_t planes, int64_t h, int64_t w, int64_t c, int relu, int threads) {
    if ((element_bytes != 2 && element_bytes != 4) || h % 2 || w % 2 || c > kMaxChannels) return 1;
    with_element(element_bytes, [&](auto t) {
        using T = decltype(t);
        with_channels(c, [&](auto C) {
            bn_pool_forward<T, decltype(C)::value>(static_cast<const T*>(z), scale, shift, static_cast<T*>(y), code,
                                                   planes, h, w, c, relu, threads);
        });
    });
    return 0;
}

int cxr_bn_pool_backward(const void* gy, const uint8_t* code, const void* z, const float* mean, const float* invstd,
                         const float* scale, void* dz, double* s1, double* s2, int element_bytes, int64_t planes,
                         int64_t h, int64_t w, int64_t c, int threads) {
    if ((element_bytes != 2 && element_bytes != 4) || h % 2 || w % 2 || c > kMaxChannels) return 1;
    const double count = static_cast<double>(planes) * h * w;
    with_element(element_bytes, [&](auto t) {
        using T = decltype(t);
        with_channels(c, [&](auto C) {
            constexpr int CC = decltype(C)::value;
            const T* g = static_cast<const T*>(gy);
            const T* zz = static_cast<const T*>(z);
            bn_pool_backward_sums<T, CC>(g, code, zz, mean, planes, h, w, c, s1, s2, threads);
            float* m1 = new float[2 * c];
            float* m2 = m1 + c;
            for (int64_t j = 0; j < c; ++j) {
                m1[j] = static_cast<float>(s1[j] / count);
                m2[j] = static_cast<float>(s2[j] * invstd[j] * invstd[j] / count);
            }
            bn_pool_backward_dx<T, CC>(g, code, zz, scale, mean, m1, m2, static_cast<T*>(dz), planes, h, w, c, threads);
            delete[] m1;
        });
    });
    return 0;
}

// the first block's patch moments (see conv1_moments); kernel sizes 3 and 5, returns 1 for others
int cxr_conv1_moments(const float* x, int k, int64_t n, int64_t h, int64_t w, int bf16, double* m, double* g,
                      int threads) {
    if (k == 3) return conv1_moments<3>(x, n, h, w, bf16, m, g, threads), 0;
    if (k == 5) return conv1_moments<5>(x, n, h, w, bf16, m, g, threads), 0;
    return 1;
}

}  // extern "C"
