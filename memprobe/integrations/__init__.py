"""memprobe inside other training frameworks (each imported only when used)."""
