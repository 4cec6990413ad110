# Included right after llama.cpp's project() when llama-cpp-python is built (the README's first command
# and tests/run.sh pass -DCMAKE_PROJECT_llama.cpp_INCLUDE=<this file> in CMAKE_ARGS). llama-cpp-python
# forces llama.cpp's `common` library on, but its Python code never loads it (nor mtmd, which
# -DLLAVA_BUILD=OFF drops): without both, the build compiles 74 units instead of 178.
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama.cpp common library (llama-cpp-python never loads it)" FORCE)
