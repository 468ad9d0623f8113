-- Argo CD health check for samd.dev/SecureModel (argocd-cm: resource.customizations.health.samd.dev_SecureModel).
-- Healthy: the operator handled this generation and Ready is True.
-- Progressing: the operator has not handled this generation yet, a check is retrying (Unknown),
--   or the serving Deployment is rolling out.
-- Degraded: Ready is False for any other reason (a signature that does not verify, a policy
--   violation, an invalid spec, an object the API server refused); the message says what to fix.
local hs = { status = "Progressing", message = "Waiting for the SAMD operator to handle the SecureModel" }
local generation = obj.metadata.generation
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "Waiting for the SAMD operator to handle generation " .. tostring(generation)
  return hs
end
local ready = nil
local serving = nil
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    ready = condition
  elseif condition.type == "Serving" then
    serving = condition
  end
end
if ready == nil then
  return hs
end
if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration ~= generation then
  hs.message = "Waiting for the Ready condition of generation " .. tostring(generation)
  return hs
end
hs.message = ready.message or ""
if ready.status == "True" then
  hs.status = "Healthy"
elseif ready.status == "Unknown" then
  hs.status = "Progressing"
elseif ready.reason ~= nil and string.sub(ready.reason, -7) == "Unknown" then
  -- Ready is False because a check it depends on is Unknown: a service is unreachable, retrying.
  hs.status = "Progressing"
elseif ready.reason == "ServingFalse" and serving ~= nil and serving.reason == "RollingOut" then
  hs.status = "Progressing"
else
  hs.status = "Degraded"
end
return hs
