# Builds and runs the consumer program one way: MODE=find_package (install first, a Release
# build), MODE=add_subdirectory (a Debug build: the library's assertions on, nothing optimised),
# MODE=clang (add_subdirectory, a Release build by CLANGXX), MODE=cuda (an install with the CUDA
# backend, and the .cu program against its blockdiff::cuda; without a GPU it builds, links and
# says so) or MODE=cuda_subdirectory (the same program, blockdiff added with add_subdirectory).
# Arguments: SOURCE, BINARY (scratch folder), MODE, MODEL (a checkpoint), GOLDEN (its decodes,
# generate.jsonl), CLANGXX.
cmake_minimum_required(VERSION 3.25)  # today's policies: a quoted "block" is a string, not a variable
file(REMOVE_RECURSE ${BINARY})
if(MODE STREQUAL "find_package" OR MODE STREQUAL "cuda")
  set(cuda OFF)
  if(MODE STREQUAL "cuda")
    set(cuda ON)
  endif()
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE} -B ${BINARY}/lib -G Ninja -DBLOCKDIFF_BUILD_TESTS=OFF
                          -DBLOCKDIFF_BUILD_EXAMPLES=OFF -DBLOCKDIFF_BUILD_BENCH=OFF -DBLOCKDIFF_CUDA=${cuda}
                          -DCMAKE_INSTALL_PREFIX=${BINARY}/prefix COMMAND_ERROR_IS_FATAL ANY)
  execute_process(COMMAND ${CMAKE_COMMAND} --install ${BINARY}/lib COMMAND_ERROR_IS_FATAL ANY)
  set(extra -DCMAKE_PREFIX_PATH=${BINARY}/prefix -DCONSUMER_CUDA=${cuda})
elseif(MODE STREQUAL "cuda_subdirectory")
  set(extra -DBLOCKDIFF_SOURCE_DIR=${SOURCE} -DBLOCKDIFF_CUDA=ON -DCONSUMER_CUDA=ON)
else()
  set(extra -DBLOCKDIFF_SOURCE_DIR=${SOURCE} -DBLOCKDIFF_CUDA=OFF)
  if(MODE STREQUAL "clang")
    list(APPEND extra -DCMAKE_CXX_COMPILER=${CLANGXX})
  endif()
endif()
set(build_type Release)
if(MODE STREQUAL "add_subdirectory")
  set(build_type Debug)
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE}/tests/consumer -B ${BINARY}/app -G Ninja -DCMAKE_BUILD_TYPE=${build_type}
                        ${extra} COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY}/app COMMAND_ERROR_IS_FATAL ANY)
# The golden decode of the model's first case in generate.jsonl, the shape the consumer decodes.
file(STRINGS ${GOLDEN} cases)
list(GET cases 0 case)
foreach(field model block sub_block cache)
  string(JSON ${field} GET "${case}" ${field})
endforeach()
get_filename_component(model_dir ${MODEL} NAME)
if(NOT model STREQUAL model_dir OR NOT block EQUAL 32 OR NOT sub_block EQUAL 8 OR NOT cache STREQUAL "block")
  message(FATAL_ERROR "the first golden decode is not of ${model_dir} with blocks of 32, sub-blocks of 8 and the "
                      "block cache")
endif()
foreach(field threshold eos_id max_new_tokens)
  string(JSON ${field} GET "${case}" ${field})
endforeach()
foreach(list prompt_ids tokens)
  string(JSON length LENGTH "${case}" ${list})
  math(EXPR last "${length} - 1")
  set(${list} "")
  foreach(i RANGE ${last})
    string(JSON id GET "${case}" ${list} ${i})
    list(APPEND ${list} ${id})
  endforeach()
  list(JOIN ${list} "," ${list})
endforeach()
execute_process(COMMAND ${BINARY}/app/consumer ${MODEL} ${prompt_ids} ${threshold} ${eos_id} ${max_new_tokens} ${tokens}
                COMMAND_ERROR_IS_FATAL ANY)
