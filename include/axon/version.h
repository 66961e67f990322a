/* axon — version and the export macro shared by every public header. */
#ifndef AXON_VERSION_H
#define AXON_VERSION_H

#define AX_VERSION_MAJOR 0
#define AX_VERSION_MINOR 1
#define AX_VERSION_PATCH 0
#define AX_VERSION_STRING "0.1.0"

/* Marks a function as part of the public ABI; everything else is hidden. */
#if defined(AX_BUILDING) && defined(__GNUC__)
#define AX_API __attribute__((visibility("default")))
#else
#define AX_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/** ax_version_string() - the library's version, "MAJOR.MINOR.PATCH". */
AX_API const char *ax_version_string(void);

#ifdef __cplusplus
}
#endif
#endif /* AXON_VERSION_H */
