/*
 * Wine test scaffolding ONLY: never ship this DLL and never install it on a real Windows host.
 *
 * Rust's std (1.78 and later) imports ProcessPrng from bcryptprimitives.dll, which Wine 8 does
 * not provide, so every Rust .exe fails to load under Wine (c0000135). tests/windows/run.sh
 * builds this stand-in with mingw and copies it into the test Wine prefix's system32. It fills
 * the buffer from BCryptGenRandom, Wine's system RNG; real Windows has its own ProcessPrng.
 */
#include <windows.h>
#include <bcrypt.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (BCryptGenRandom(NULL, data, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG) != 0)
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
