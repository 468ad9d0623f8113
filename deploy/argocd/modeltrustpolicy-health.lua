-- Argo CD health check for samd.dev/ModelTrustPolicy (argocd-cm: resource.customizations.health.samd.dev_ModelTrustPolicy).
-- Healthy: the operator handled this generation and every signer is usable (Ready True).
-- Degraded: Ready is False (an unusable signer, an invalid spec); the message names it.
-- Progressing: the operator has not handled this generation yet.
local hs = { status = "Progressing", message = "Waiting for the SAMD operator to check the policy" }
local generation = obj.metadata.generation
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "Waiting for the SAMD operator to handle generation " .. tostring(generation)
  return hs
end
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    if generation ~= nil and condition.observedGeneration ~= nil and condition.observedGeneration ~= generation then
      return hs
    end
    hs.message = condition.message or ""
    if condition.status == "True" then
      hs.status = "Healthy"
    elseif condition.status == "False" then
      hs.status = "Degraded"
    end
    return hs
  end
end
return hs
