# CMake 3.25 knows no C++20 flag for nvcc, so it neither records the cuda_std_20 feature that
# blockdiff::cuda asks for nor can apply it. blockdiff_know_cuda20([PARENT_SCOPE]) gives both where
# the CUDA compiler is nvcc and CMake lacks them, as CMake gives the standards it knows when it
# enables the language: in the calling scope, or with PARENT_SCOPE in its parent (the directory
# that added blockdiff with add_subdirectory, whose targets link it). The flag is not cached and
# the feature is (with the compiler's other facts), so a configure run again needs only the flag.
macro(blockdiff_know_cuda20)
  if(CMAKE_CUDA_COMPILER_ID STREQUAL "NVIDIA" AND NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20" ${ARGN})
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20" ${ARGN})
  endif()
  if(CMAKE_CUDA_COMPILER_ID STREQUAL "NVIDIA" AND NOT "cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES)
    set(CMAKE_CUDA20_COMPILE_FEATURES cuda_std_20 ${ARGN})
    set(CMAKE_CUDA_COMPILE_FEATURES "${CMAKE_CUDA_COMPILE_FEATURES};cuda_std_20" ${ARGN})
  endif()
endmacro()
