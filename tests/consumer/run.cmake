# Builds and runs the consumer program one way: MODE=find_package (install first) or
# MODE=add_subdirectory. Arguments: SOURCE, BINARY (scratch folder), MODE, MODEL (a checkpoint).
file(REMOVE_RECURSE ${BINARY})
if(MODE STREQUAL "find_package")
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE} -B ${BINARY}/lib -G Ninja -DBLOCKDIFF_BUILD_TESTS=OFF
                          -DBLOCKDIFF_BUILD_EXAMPLES=OFF -DBLOCKDIFF_BUILD_BENCH=OFF -DBLOCKDIFF_CUDA=OFF
                          -DCMAKE_INSTALL_PREFIX=${BINARY}/prefix COMMAND_ERROR_IS_FATAL ANY)
  execute_process(COMMAND ${CMAKE_COMMAND} --install ${BINARY}/lib COMMAND_ERROR_IS_FATAL ANY)
  set(extra -DCMAKE_PREFIX_PATH=${BINARY}/prefix)
else()
  set(extra -DBLOCKDIFF_SOURCE_DIR=${SOURCE} -DBLOCKDIFF_CUDA=OFF)
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE}/tests/consumer -B ${BINARY}/app -G Ninja -DCMAKE_BUILD_TYPE=Release ${extra}
                COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY}/app COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${BINARY}/app/consumer ${MODEL} COMMAND_ERROR_IS_FATAL ANY)
