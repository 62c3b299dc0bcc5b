# CMake glue only: system packages (Debian) exposed as imported targets. No copied code, no downloads.
find_package(CUDAToolkit REQUIRED)            # cudart, cuBLASLt, NCCL come with the toolkit
find_package(yaml-cpp REQUIRED)               # libyaml-cpp-dev
find_package(GTest REQUIRED)                  # libgtest-dev
find_package(benchmark REQUIRED)              # libbenchmark-dev
find_package(nlohmann_json 3 REQUIRED)        # nlohmann-json3-dev
find_package(CLI11 REQUIRED)                  # libcli11-dev

# sentencepiece (libsentencepiece-dev) ships no CMake config.
find_path(SENTENCEPIECE_INCLUDE_DIR sentencepiece_processor.h)
find_library(SENTENCEPIECE_LIBRARY sentencepiece)
if(NOT SENTENCEPIECE_INCLUDE_DIR OR NOT SENTENCEPIECE_LIBRARY)
  message(FATAL_ERROR "sentencepiece not found: run tools/setup.sh (installs libsentencepiece-dev)")
endif()
add_library(third_party::sentencepiece UNKNOWN IMPORTED GLOBAL)
set_target_properties(third_party::sentencepiece PROPERTIES
  IMPORTED_LOCATION "${SENTENCEPIECE_LIBRARY}"
  INTERFACE_INCLUDE_DIRECTORIES "${SENTENCEPIECE_INCLUDE_DIR}")
# The trainer (same package) is for tests only: they train a tiny model instead of shipping a binary file.
find_library(SENTENCEPIECE_TRAIN_LIBRARY sentencepiece_train)
if(NOT SENTENCEPIECE_TRAIN_LIBRARY)
  message(FATAL_ERROR "sentencepiece_train not found: run tools/setup.sh (installs libsentencepiece-dev)")
endif()
add_library(third_party::sentencepiece_train UNKNOWN IMPORTED GLOBAL)
set_target_properties(third_party::sentencepiece_train PROPERTIES
  IMPORTED_LOCATION "${SENTENCEPIECE_TRAIN_LIBRARY}"
  INTERFACE_LINK_LIBRARIES third_party::sentencepiece)

# NCCL: the toolkit's CMake package does not export it.
find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
  add_library(third_party::nccl UNKNOWN IMPORTED GLOBAL)
  set_target_properties(third_party::nccl PROPERTIES
    IMPORTED_LOCATION "${NCCL_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}")
endif()
