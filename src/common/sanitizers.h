// Whether this build runs under a sanitizer, for the few checks that such a
// build changes (resident memory, run time): g++ defines __SANITIZE_*__,
// clang answers __has_feature.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define SW_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define SW_TSAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SW_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define SW_TSAN 1
#endif
#endif
