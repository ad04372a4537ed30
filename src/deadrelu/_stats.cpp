// deadrelu's native CPU kernel for the "range" and "full" statistics (deadrelu/native.py).
//
// One pass over a float32 batch viewed as (A, U, B) (contiguous; B == 1 when units are
// last), per unit: positions with z > 0, the sum of relu(z) or of |out|, max and min of z,
// the non-finite positions, and for "full" the sums of z - K and (z - K)^2 about a per-unit
// shift K; the batch is merged into the float64/int64 accumulators of a UnitStats (the
// moments by Chan's formula). The same results as the torch ops of
// stats._eager_reductions + _merge_range / _merge_full up to float summation order.
//
// Speed: 64 lanes of independent vector accumulators per statistic (a single accumulator is a
// chain of dependent instructions, which is what limits the code torch.compile generates
// here), and max/min are plain compares. Units last, the per-unit partials live in memory
// (L1 for a few thousand units) and the batch is read in memory order. NaN does not propagate through those, so the
// units whose sum of z - K is not finite (a NaN or +-inf in them, or an overflow) are
// recounted in a second pass over the batch (count_nonfinite) to give torch's semantics:
// NaN extrema (and a NaN relu sum) when the unit saw a NaN, and the exact non-finite
// count. The sums themselves follow IEEE arithmetic like torch's.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

// The vector width of the target: 16 lanes with AVX-512, 8 with AVX, 4 otherwise. Generic
// vectors wider than the hardware's are not split cleanly: compiled for AVX2, 64-byte
// vectors turned every compare and select into scalar code (about 10x slower than the
// AVX-512 build, 2.5x slower than torch's eager ops on a conv map).
#if defined(__AVX512F__)
constexpr int kW = 16;
#elif defined(__AVX__)
constexpr int kW = 8;
#else
constexpr int kW = 4;
#endif
constexpr int kV = 64 / kW;  // vectors per step of 64 values
typedef float vf __attribute__((vector_size(4 * kW)));
typedef int32_t vi __attribute__((vector_size(4 * kW)));

// One unit's batch partial: |out| (or relu) sum, sums of z - K and of its square, active
// count, extrema.
struct Part {
    double abs_sum, sum, sum2;
    int64_t active;
    float max, min;
};

const Part kEmpty = {0.0, 0.0, 0.0, 0, -INFINITY, INFINITY};

inline vf load(const float* p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

inline void fold(Part* p, double abs_sum, double sum, double sum2, int64_t active, float mx, float mn) {
    p->abs_sum += abs_sum;
    p->sum += sum;
    p->sum2 += sum2;
    p->active += active;
    p->max = mx > p->max ? mx : p->max;
    p->min = mn < p->min ? mn : p->min;
}

// kV independent vector accumulators per statistic, over 64 lanes in all.
struct Lanes {
    vf abs_sum[kV], sum[kV], sum2[kV], mx[kV], mn[kV];
    vi active[kV];

    Lanes() {
        reset_sums();
        for (int j = 0; j < kV; j++) {
            mx[j] = vf{} - INFINITY;
            mn[j] = vf{} + INFINITY;
        }
    }

    void reset_sums() {
        for (int j = 0; j < kV; j++) {
            abs_sum[j] = sum[j] = sum2[j] = vf{};
            active[j] = vi{};
        }
    }

    // Add N * kW consecutive values of z (and of |out| when OUT), one per lane of the first N
    // vectors; k: the shift of each lane (MOM only).
    template <bool OUT, bool MOM, int N = kV>
    void step(const float* z, const float* out, const vf* k) {
        const vf zero = {};
        const vi abs_mask = vi{} + 0x7fffffff;
        for (int j = 0; j < N; j++) {
            vf v = load(z + kW * j);
            vi pos = v > zero;
            active[j] -= pos;  // true is -1
            if (OUT)
                abs_sum[j] += (vf)((vi)load(out + kW * j) & abs_mask);
            else
                abs_sum[j] += (vf)((vi)v & pos);
            vf d = MOM ? v - k[j] : v;
            sum[j] += d;
            if (MOM) sum2[j] += d * d;
            mx[j] = v > mx[j] ? v : mx[j];
            mn[j] = v < mn[j] ? v : mn[j];
        }
    }

    // Fold lane l of accumulator j into p (sums only, or the extrema only).
    void flush_sums(int j, int l, Part* p) const {
        fold(p, abs_sum[j][l], sum[j][l], sum2[j][l], active[j][l], -INFINITY, INFINITY);
    }
    void flush_extrema(int j, int l, Part* p) const { fold(p, 0.0, 0.0, 0.0, 0, mx[j][l], mn[j][l]); }
};

// Reduce n contiguous values of z (and of out when OUT) with shift k into p.
template <bool OUT, bool MOM>
void row(const float* z, const float* out, int64_t n, float k, Part* p) {
    Lanes acc;
    vf kv[kV];
    for (int j = 0; j < kV; j++) kv[j] = vf{} + k;
    int64_t b = 0;
    for (; b + 64 <= n; b += 64) acc.step<OUT, MOM>(z + b, OUT ? out + b : nullptr, kv);
    for (; b + kW <= n; b += kW) acc.step<OUT, MOM, 1>(z + b, OUT ? out + b : nullptr, kv);
    double a = 0.0, s = 0.0, s2 = 0.0;
    int64_t c = 0;
    float hi = -INFINITY, lo = INFINITY;
    if (b > 0) {  // the vectors combined, then their lanes (rows shorter than kW: the tail only)
        vf va = acc.abs_sum[0], vs = acc.sum[0], vs2 = acc.sum2[0], vhi = acc.mx[0], vlo = acc.mn[0];
        vi vc = acc.active[0];
        for (int j = 1; j < kV; j++) {
            va += acc.abs_sum[j];
            vs += acc.sum[j];
            vs2 += acc.sum2[j];
            vc += acc.active[j];
            vhi = acc.mx[j] > vhi ? acc.mx[j] : vhi;
            vlo = acc.mn[j] < vlo ? acc.mn[j] : vlo;
        }
        for (int l = 0; l < kW; l++) {
            a += va[l];
            s += vs[l];
            s2 += vs2[l];
            c += vc[l];
            hi = vhi[l] > hi ? vhi[l] : hi;
            lo = vlo[l] < lo ? vlo[l] : lo;
        }
    }
    for (; b < n; b++) {  // branch-free: the signs of z are random (a branch cost 4x here)
        float v = z[b], d = MOM ? v - k : v;
        c += v > 0;
        a += OUT ? fabsf(out[b]) : fmaxf(v, 0.0f);
        s += d;
        s2 += MOM ? d * d : 0.0f;
        hi = fmaxf(v, hi);
        lo = fminf(v, lo);
    }
    fold(p, a, s, s2, c, hi, lo);
}

#ifndef DEADRELU_CHUNK
#define DEADRELU_CHUNK 64
#endif
// Positions between flushes of the float partials into double (units last). 64 keeps the
// float32 partial sums of "full" within about 1e-6 of pairwise summation; 256 was 3e-5 off
// on one thread, at the same speed (benchmarks/native_profile.py, thread CPU time).
const int64_t kChunk = DEADRELU_CHUNK;
// Units last: positions per load and store of the per-unit partials (2, 4 and 8 measured:
// 8 a little faster for 3072 units, the same elsewhere; what is left of a chunk goes one
// position at a time).
#ifndef DEADRELU_ROWS
#define DEADRELU_ROWS 8
#endif

// Units last (B == 1): per-unit float partials in memory, buf[0, 6 W): |out| (or relu) sums,
// sums of z - K and of its square, maxima, minima, active counts (int32).
struct Columns {
    float *abs_sum, *sum, *sum2, *mx, *mn;
    int32_t* active;
    Columns(float* buf, int64_t W)
        : abs_sum(buf), sum(buf + W), sum2(buf + 2 * W), mx(buf + 3 * W), mn(buf + 4 * W),
          active((int32_t*)(buf + 5 * W)) {}
};

inline vi load_i(const int32_t* p) {
    vi v;
    memcpy(&v, p, sizeof v);
    return v;
}
template <class V>
inline void store(void* p, V v) {
    memcpy(p, &v, sizeof v);
}

// Add R consecutive positions (rows of `stride` values; z, out, k point at unit 0) of W units
// into the partials c: each row is read in memory order, kW units at a time, and the partials
// of those units are loaded and stored once per R rows.
template <int R, bool OUT, bool MOM>
inline void rows(const float* z, const float* out, const float* k, int64_t W, int64_t stride, const Columns& c) {
    const vf zero = {};
    const vi abs_mask = vi{} + 0x7fffffff;
    int64_t u = 0;
    for (; u + kW <= W; u += kW) {
        vf a = load(c.abs_sum + u), s = load(c.sum + u), s2 = MOM ? load(c.sum2 + u) : zero;
        vf hi = load(c.mx + u), lo = load(c.mn + u), kv = MOM ? load(k + u) : zero;
        vi n = load_i(c.active + u);
        for (int r = 0; r < R; r++) {
            vf v = load(z + r * stride + u);
            vi pos = v > zero;
            n -= pos;  // true is -1
            if (OUT)
                a += (vf)((vi)load(out + r * stride + u) & abs_mask);
            else
                a += (vf)((vi)v & pos);
            vf d = MOM ? v - kv : v;
            s += d;
            if (MOM) s2 += d * d;
            hi = v > hi ? v : hi;
            lo = v < lo ? v : lo;
        }
        store(c.abs_sum + u, a);
        store(c.sum + u, s);
        if (MOM) store(c.sum2 + u, s2);
        store(c.mx + u, hi);
        store(c.mn + u, lo);
        store(c.active + u, n);
    }
    for (; u < W; u++) {  // the W % kW units left
        for (int r = 0; r < R; r++) {
            float v = z[r * stride + u], d = MOM ? v - k[u] : v;
            c.active[u] += v > 0;
            c.abs_sum[u] += OUT ? fabsf(out[r * stride + u]) : (v > 0 ? v : 0.0f);
            c.sum[u] += d;
            if (MOM) c.sum2[u] += d * d;
            c.mx[u] = v > c.mx[u] ? v : c.mx[u];
            c.mn[u] = v < c.mn[u] ? v : c.mn[u];
        }
    }
}

// Units last: positions [a0, a1) of units [0, W) (rows of `stride` values; z, out and k
// point at unit 0) into parts[0, W), through the float partials in buf (6 W floats). Memory
// is read in order, row by row, whatever W: an earlier version kept 64 units in registers
// and went down the batch once per 64 units (strided reads: 2.3 ms where one sequential pass
// took 0.25 ms for 128 units, 25088 positions) and reduced the W % 64 units left in a loop
// the compiler did not vectorise (7.6 ms for 160 units: timm's convnext GELUs).
template <bool OUT, bool MOM>
void columns(const float* z, const float* out, const float* k, int64_t a0, int64_t a1, int64_t W,
             int64_t stride, Part* parts, float* buf) {
    const Columns c(buf, W);
    for (int64_t u = 0; u < W; u++) {
        c.mx[u] = -INFINITY;
        c.mn[u] = INFINITY;
    }
    for (int64_t a = a0; a < a1; a += kChunk) {
        const int64_t end = a + kChunk < a1 ? a + kChunk : a1;
        memset(c.abs_sum, 0, sizeof(float) * (size_t)(3 * W));  // abs_sum, sum, sum2
        memset(c.active, 0, sizeof(int32_t) * (size_t)W);
        int64_t i = a;
        for (; i + DEADRELU_ROWS <= end; i += DEADRELU_ROWS)
            rows<DEADRELU_ROWS, OUT, MOM>(z + i * stride, OUT ? out + i * stride : nullptr, k, W, stride, c);
        for (; i < end; i++) rows<1, OUT, MOM>(z + i * stride, OUT ? out + i * stride : nullptr, k, W, stride, c);
        for (int64_t u = 0; u < W; u++)
            fold(parts + u, c.abs_sum[u], c.sum[u], c.sum2[u], c.active[u], -INFINITY, INFINITY);
    }
    for (int64_t u = 0; u < W; u++) fold(parts + u, 0.0, 0.0, 0.0, 0, c.mx[u], c.mn[u]);
}

// body(t, T) on each of T threads (T <= threads; 1 without OpenMP), t = 0 .. T - 1.
template <class F>
void parallel(int threads, F body) {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    body(omp_get_thread_num(), omp_get_num_threads());
#else
    (void)threads;
    body(0, 1);
#endif
}

// Whether the threads split the units (each reduces whole units into parts[u]) rather
// than the positions (each reduces a contiguous range of rows or positions into its own
// copy of the U partials, combined afterwards). Positions are faster: each thread reads
// memory in the order the producer of the activation wrote it, mostly from its own cache
// (a conv scan ran at 0.95 x plain inference against 0.89 split by units), so units are
// split only when the copies would be large (more than 2**16 partials).
inline bool split_units(int64_t U, int threads) { return (int64_t)threads * U > (1 << 16); }

// parts: U partials when split_units, else threads x U; buf: 6 U floats per thread (units
// last only).
template <bool OUT, bool MOM>
void reduce(const float* z, const float* out, const float* k, int64_t A, int64_t U, int64_t B, int threads,
            Part* parts, float* buf) {
    const bool by_units = split_units(U, threads);
    parallel(threads, [&](int t, int T) {
        float* mine_buf = buf ? buf + (int64_t)t * 6 * U : nullptr;
        if (B > 1) {  // rows (a, u) of B contiguous positions
            if (by_units) {  // whole units, every row of each
                for (int64_t u = U * t / T; u < U * (t + 1) / T; u++)
                    for (int64_t a = 0; a < A; a++) {
                        int64_t r = a * U + u;
                        row<OUT, MOM>(z + r * B, OUT ? out + r * B : nullptr, B, MOM ? k[u] : 0.0f, parts + u);
                    }
            } else {  // a contiguous range of rows
                Part* mine = parts + (int64_t)t * U;
                for (int64_t r = A * U * t / T; r < A * U * (t + 1) / T; r++) {
                    int64_t u = r % U;
                    row<OUT, MOM>(z + r * B, OUT ? out + r * B : nullptr, B, MOM ? k[u] : 0.0f, mine + u);
                }
            }
        } else if (by_units) {  // units last, a range of whole vectors of units each
            const int64_t vectors = (U + kW - 1) / kW;
            const int64_t u0 = kW * (vectors * t / T), u1 = kW * (vectors * (t + 1) / T) < U ? kW * (vectors * (t + 1) / T) : U;
            if (u1 > u0)
                columns<OUT, MOM>(z + u0, OUT ? out + u0 : nullptr, MOM ? k + u0 : nullptr, 0, A, u1 - u0, U,
                                  parts + u0, mine_buf);
        } else {  // units last, a contiguous range of positions
            columns<OUT, MOM>(z, out, k, A * t / T, A * (t + 1) / T, U, U, parts + (int64_t)t * U, mine_buf);
        }
    });
}

// The exact non-finite count and NaN flag of the units listed in `units` (n of them; those
// whose sum of z - K was not finite), in one parallel pass over the batch in memory order:
// bad[u] += positions where z is NaN or +-inf, nan[u] = 1 if any is NaN. False (nothing
// written) when out of memory.
bool count_nonfinite(const float* z, int64_t A, int64_t U, int64_t B, const int64_t* units, int64_t n,
                     int threads, int64_t* bad, unsigned char* nan) {
    unsigned char* listed = (unsigned char*)calloc((size_t)U, 1);  // u -> listed?
    int64_t* part_bad = (int64_t*)calloc((size_t)threads * (size_t)U, sizeof(int64_t));
    unsigned char* part_nan = (unsigned char*)calloc((size_t)threads * (size_t)U, 1);
    const bool ok = listed && part_bad && part_nan;
    if (ok) {
        for (int64_t j = 0; j < n; j++) listed[units[j]] = 1;
        parallel(threads, [&](int t, int T) {
            int64_t* my_bad = part_bad + (int64_t)t * U;
            unsigned char* my_nan = part_nan + (int64_t)t * U;
            if (B > 1) {  // rows (a, u): only the listed units' rows
                for (int64_t r = A * U * t / T; r < A * U * (t + 1) / T; r++) {
                    int64_t u = r % U;
                    if (!listed[u]) continue;
                    for (int64_t b = 0; b < B; b++) {
                        float v = z[r * B + b];
                        my_bad[u] += !isfinite(v);
                        my_nan[u] |= isnan(v);
                    }
                }
            } else {  // positions of U units: the listed units of each
                for (int64_t i = A * t / T; i < A * (t + 1) / T; i++) {
                    for (int64_t j = 0; j < n; j++) {
                        int64_t u = units[j];
                        float v = z[i * U + u];
                        my_bad[u] += !isfinite(v);
                        my_nan[u] |= isnan(v);
                    }
                }
            }
        });
        for (int t = 0; t < threads; t++)
            for (int64_t j = 0; j < n; j++) {
                int64_t u = units[j];
                bad[u] += part_bad[(int64_t)t * U + u];
                nan[u] |= part_nan[(int64_t)t * U + u];
            }
    }
    free(listed);
    free(part_bad);
    free(part_nan);
    return ok;
}

inline double max_nan(double a, double b) { return (isnan(a) || isnan(b)) ? NAN : (a > b ? a : b); }
inline double min_nan(double a, double b) { return (isnan(a) || isnan(b)) ? NAN : (a < b ? a : b); }

}  // namespace

// z, out: (A, U, B) contiguous float32 (out may be null); mode 0: no |out| sum (abs_sum is
// left alone), 1: the sum of relu(z), 2: the sum of |out|. Accumulators: positions (0-d)
// and active, nonfinite (U,) int64; abs_sum, z_max, z_min (U,) float64. With shift (U,)
// float32 (finite), also the moments about it, merged into z_sum and z_m2 (U,) float64
// (detail "full"); all three null otherwise. Returns 0, or 1 when out of memory (nothing
// changed).
extern "C" int deadrelu_stats_update(const float* z, const float* out, const float* shift, int64_t A,
                                     int64_t U, int64_t B, int mode, int threads, int64_t* positions,
                                     int64_t* active, double* abs_sum, double* z_max, double* z_min,
                                     int64_t* nonfinite, double* z_sum, double* z_m2) {
    if (threads < 1) threads = 1;
    const int copies = split_units(U, threads) ? 1 : threads;  // sets of U partials
    Part* parts = (Part*)malloc(sizeof(Part) * (size_t)copies * (size_t)U);
    float* buf = B > 1 ? nullptr : (float*)malloc(sizeof(float) * 6 * (size_t)U * (size_t)threads);
    int64_t* flagged = (int64_t*)malloc(sizeof(int64_t) * (size_t)U);  // units to recount
    int64_t* bad = (int64_t*)calloc((size_t)U, sizeof(int64_t));
    unsigned char* nan = (unsigned char*)calloc((size_t)U, 1);
    auto finish = [&](int status) {
        free(parts);
        free(buf);
        free(flagged);
        free(bad);
        free(nan);
        return status;
    };
    if (!parts || (B == 1 && !buf) || !flagged || !bad || !nan) return finish(1);
    for (int64_t i = 0; i < (int64_t)copies * U; i++) parts[i] = kEmpty;
    if (mode == 2 && shift)
        reduce<true, true>(z, out, shift, A, U, B, threads, parts, buf);
    else if (mode == 2)
        reduce<true, false>(z, out, nullptr, A, U, B, threads, parts, buf);
    else if (shift)
        reduce<false, true>(z, nullptr, shift, A, U, B, threads, parts, buf);
    else
        reduce<false, false>(z, nullptr, nullptr, A, U, B, threads, parts, buf);
    // combine the threads' copies into parts[0, U); list the units whose sum is not finite
    int64_t n_flagged = 0;
    for (int64_t u = 0; u < U; u++) {
        for (int t = 1; t < copies; t++) {
            const Part& q = parts[(int64_t)t * U + u];
            fold(parts + u, q.abs_sum, q.sum, q.sum2, q.active, q.max, q.min);
        }
        if (!isfinite(parts[u].sum)) flagged[n_flagged++] = u;  // rare: NaN/+-inf (or overflow)
    }
    if (n_flagged && !count_nonfinite(z, A, U, B, flagged, n_flagged, threads, bad, nan)) return finish(1);
    // merge: nothing above wrote an accumulator
    const double n_a = (double)*positions, n_b = (double)(A * B);  // positions before, in batch
    *positions += A * B;
    for (int64_t u = 0; u < U; u++) {
        const Part& p = parts[u];
        double hi = p.max, lo = p.min, a = p.abs_sum;
        nonfinite[u] += bad[u];
        if (nan[u]) {
            hi = lo = NAN;
            if (mode == 1) a = NAN;  // relu(NaN) is NaN
        }
        active[u] += p.active;
        if (mode) abs_sum[u] += a;
        z_max[u] = max_nan(z_max[u], hi);
        z_min[u] = min_nan(z_min[u], lo);
        if (shift) {  // Chan et al.'s merge of (n_b, mean_b, M2_b) into (n_a, z_sum, z_m2)
            double mean_b = shift[u] + p.sum / n_b, m2_b = p.sum2 - p.sum * p.sum / n_b;
            double delta = mean_b - z_sum[u] / (n_a > 1.0 ? n_a : 1.0);
            z_m2[u] += m2_b + delta * delta * (n_a * n_b / (n_a + n_b));
            z_sum[u] += mean_b * n_b;
        }
    }
    return finish(0);
}
